"""Watch it learn: per-image test predictions, the probe timelapse, the paired comparison of two runs."""

import numpy as np
import pytest

from cxrdemo.cli.main import main as cli
from cxrdemo.config import TrainConfig
from cxrdemo.errors import ConfigError
from cxrdemo.model import predictions, probes
from cxrdemo.runs import store as runs
from cxrdemo.runs.worker import execute_run
from tests.helpers import make_square_dataset, tiny_config


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_square_dataset(tmp_path_factory.mktemp("watch_ds"), per_split=(8, 4, 4), size=40, top=8)


pytestmark = pytest.mark.usefixtures("store")  # every test trains in conftest's private run store


def _train(data, **kw):
    d = runs.create_run(tiny_config(data, **{"epochs": 2, "step_size": 0, "threads": 1, **kw}))
    status = execute_run(d)
    assert status["state"] == "completed", status
    return d


def test_choose_probes_is_stratified_and_seeded():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2)
    a = probes.choose_probes(labels, 3, seed=4)
    assert a == probes.choose_probes(labels, 3, seed=4)
    assert a != probes.choose_probes(labels, 3, seed=5)
    assert np.bincount(labels[a]).tolist() == [3, 3, 2]


def test_probe_option_is_validated():
    assert TrainConfig().probes == 3
    with pytest.raises(ConfigError, match="Probe images"):
        TrainConfig(probes=-1)


@pytest.mark.slow
def test_run_writes_probes_per_epoch_and_test_predictions(ds):
    d = _train(ds, epochs=3)
    t = probes.read_timeline(d)
    assert t.epochs == [1, 2, 3]
    assert t.classes == ("NORMAL", "PNEUMONIA") and t.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert t.probs.shape == (3, 6, 2) and np.allclose(t.probs.sum(-1), 1, atol=1e-5)
    assert t.heatmaps.shape == (3, 6, probes.HEATMAP_PX, probes.HEATMAP_PX) and t.heatmaps.dtype == np.uint8
    assert t.thumbnails.shape == (6, probes.THUMB_PX, probes.THUMB_PX)
    assert all(n.startswith("val/") and not n.startswith("/") for n in t.names)
    size = sum(f.stat().st_size for f in (d / probes.FOLDER).iterdir())
    assert size < 100_000
    p = predictions.read(d / predictions.FILE)
    assert len(p.images) == 8 and all(n.startswith("test/") for n in p.images)
    assert all(len(h) == 12 for h in p.hashes)
    tm = runs.read_test_metrics(d)
    assert p.y_true.tolist() == tm["y_true"]
    # the calibrated probabilities (as Diagnosis shows them) beside the network's own
    assert np.allclose(p.probs, tm["calibrated_probs"], atol=2e-6) and np.allclose(p.raw, tm["probs"], atol=2e-6)
    assert tm["calibration"]["temperature"] != 1.0 and not np.allclose(p.probs, p.raw, atol=1e-3)
    assert (p.y_pred == p.raw.argmax(1)).all()
    assert p.sets is None  # 4 validation images per class: too few for a 90% set (10 needed)
    assert float(np.mean(p.y_pred == p.y_true)) == pytest.approx(tm["accuracy"])


@pytest.mark.slow
def test_same_seed_same_probes_and_probes_off(ds):
    a, b = _train(ds, seed=7), _train(ds, seed=7)
    ta, tb = probes.read_timeline(a), probes.read_timeline(b)
    assert ta.names == tb.names
    assert np.array_equal(ta.probs, tb.probs) and np.array_equal(ta.heatmaps, tb.heatmaps)
    assert probes.read_timeline(_train(ds, probes=0, epochs=1)) is None


@pytest.mark.slow
def test_evaluate_writes_predictions_for_another_dataset(ds, tmp_path, capsys):
    d = _train(ds, epochs=1, probes=0)
    out = tmp_path / "preds.csv"
    assert cli(["evaluate", "--run", d.name, "--data", str(ds), "--out", str(out)]) == 0
    p, own = predictions.read(out), predictions.read(d / predictions.FILE)
    assert p.images == own.images and p.hashes == own.hashes
    # the same model on the same images: the same calibrated and raw probabilities as the run wrote at finish
    np.testing.assert_allclose(p.probs, own.probs, atol=1e-5)
    np.testing.assert_allclose(p.raw, own.raw, atol=1e-5)
    assert not np.allclose(p.probs, p.raw, atol=1e-4)


def _preds(y, probs, images=None, threshold=None):
    probs = np.asarray(probs, float)
    n = len(y)
    images = images or [f"test/{i:03d}.png" for i in range(n)]
    pred = (probs[:, 1] >= threshold).astype(int) if threshold is not None else probs.argmax(1)
    return predictions.Predictions(images, ["h" * 12] * n, ("NORMAL", "PNEUMONIA"), np.asarray(y), probs, pred)


def _scores(y, noise, rng):
    s = np.clip(0.5 + (np.asarray(y) - 0.5) * 0.3 + rng.normal(0, noise, len(y)), 0, 1)
    return np.c_[1 - s, s]


def test_paired_interval_covers_a_planted_difference():
    from cxrdemo.model import paired
    from cxrdemo.views.checks import difference_sentence

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 150)
    a, b = _preds(y, _scores(y, 0.35, rng)), _preds(y, _scores(y, 0.12, rng))
    result = paired.compare(a, b, n_resamples=500)
    auc, acc = result.differences
    assert result.n == 300 and result.unmatched == 0
    assert auc.a == pytest.approx(_sk_auc(y, a.probs[:, 1])) and auc.b == pytest.approx(_sk_auc(y, b.probs[:, 1]))
    assert auc.low < auc.delta < auc.high and auc.low > 0  # B is clearly better: the interval excludes 0
    assert acc.delta == pytest.approx(np.mean(b.y_pred == y) - np.mean(a.y_pred == y))
    assert acc.low < acc.delta < acc.high
    assert "higher" in difference_sentence(auc, result.n) and "unlikely to be chance" in difference_sentence(auc, result.n)


def test_paired_identical_runs_differ_by_zero():
    from cxrdemo.model import paired
    from cxrdemo.views.checks import difference_sentence

    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 20)
    a = _preds(y, _scores(y, 0.3, rng))
    result = paired.compare(a, a, n_resamples=200)
    for d in result.differences:
        assert d.delta == 0 and d.low == 0 and d.high == 0 and d.could_be_chance
    assert "the same as" in difference_sentence(result.differences[0], 40)


def test_paired_small_difference_could_be_chance_and_matching():
    from cxrdemo.model import paired
    from cxrdemo.views.checks import difference_sentence

    rng = np.random.default_rng(2)
    y = np.array([0, 1] * 37)
    pa = _scores(y, 0.3, rng)
    pb = np.clip(pa + rng.normal(0, 0.02, pa.shape), 0, 1)
    # B lists its images in another order and has two more: matched by name and hash, the extra ones counted
    order = rng.permutation(74)
    names = [f"test/{i:03d}.png" for i in range(74)]
    b = _preds(np.r_[y[order], [0, 1]], np.r_[pb[order], [[0.5, 0.5], [0.5, 0.5]]],
               [names[i] for i in order] + ["test/x.png", "test/y.png"])
    result = paired.compare(_preds(y, pa, names), b, n_resamples=500)
    assert result.n == 74 and result.unmatched == 2
    auc = result.differences[0]
    assert auc.could_be_chance and "on these 74 images the difference could be chance" in difference_sentence(auc, 74)


def _sk_auc(y, s):
    from sklearn.metrics import roc_auc_score
    return roc_auc_score(y, s)


@pytest.mark.slow
def test_cli_compare(ds, capsys, store):
    a, b = _train(ds, epochs=1, probes=0), _train(ds, epochs=2, probes=0)
    assert cli(["compare", a.name, b.name, "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "8 test images in common" in out and "95% interval" in out and out.count("on these 8 images") == 2
    (b / predictions.FILE).unlink()
    assert cli(["compare", a.name, b.name]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.slow
def test_timelapse_figure_has_one_frame_per_epoch(ds):
    from cxrdemo.views import numbers, timelapse

    a, b = _train(ds, epochs=3, seed=1), _train(ds, epochs=2, seed=2)
    timelines = timelapse.read_timelines({"A": a, "B": b, "none": a.parent / "missing"})
    assert list(timelines) == ["A", "B"]
    fig = timelapse.timelapse_figure(timelines)
    assert [f.name for f in fig.frames] == ["1", "2", "3"]
    assert len(fig.data) == 12 and all(len(f.data) == 12 for f in fig.frames)
    assert [s.label for s in fig.layout.sliders[0].steps] == ["1", "2", "3"]
    t = timelines["A"]
    last = [a.text for a in fig.frames[-1].layout.annotations if "p=" in a.text]
    true = t.labels[0]
    assert last[0].startswith(f"{t.classes[true]}: p={numbers.percent(t.probs[-1, 0, true])}")
    strip = timelapse.timelapse_figure({"A": t}, animate=False)
    assert not strip.frames and "epoch 3" in strip.layout.title.text
    lines = timelapse.probability_figure(timelines)
    assert len(lines.data) == 12 and list(lines.data[0].y) == pytest.approx(t.probs[:, 0, true].tolist())
    names = {"A": "first run (example)", "B": "second run"}  # the page's short names label rows and legends
    named = timelapse.timelapse_figure(timelines, names=names)
    assert [a.text for a in named.layout.annotations if a.text in names.values()] == list(names.values())
    legend = {d.name for d in timelapse.probability_figure(timelines, names=names).data}
    assert legend == set(names.values())


def test_gallery_orders_the_most_confidently_wrong_first(tmp_path):
    from cxrdemo.views import gallery

    y = np.array([0, 0, 0, 0, 1, 1, 1])
    probs = np.array([[0.2, 0.8], [0.45, 0.55], [0.05, 0.95], [0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.99, 0.01]])
    p = _preds(y, probs)
    wrong = gallery.cell_images(p, 0, 1)
    assert wrong["image"].tolist() == ["test/002.png", "test/000.png", "test/001.png"]
    assert wrong["p_predicted"].tolist() == [0.95, 0.8, 0.55]
    assert gallery.cell_images(p, 1, 0)["image"].tolist() == ["test/006.png", "test/005.png"]
    assert gallery.cell_images(p, 1, 1)["image"].tolist() == ["test/004.png"]
    fig = gallery.confusion_markers_figure(p)
    cells = {tuple(c): int(n) for c, n in zip(fig.data[0].customdata, fig.data[0].text)}
    assert cells == {(0, 0): 1, (0, 1): 3, (1, 0): 2, (1, 1): 1}
    assert gallery.selected_cell([{"customdata": [0, 1], "x": "PNEUMONIA"}]) == (0, 1)
    assert gallery.selected_cell([{"customdata": {"0": 1, "1": 0}}]) == (1, 0)  # a typed-array row from a browser
    assert gallery.selected_cell([]) is None and gallery.selected_cell([{"customdata": None}]) is None
    assert fig.to_plotly_json()["data"][0]["customdata"] == [[0, 0], [0, 1], [1, 0], [1, 1]]  # plain lists
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "002.png").write_bytes(b"x")
    assert gallery.image_file(str(tmp_path), "test/002.png") == (tmp_path / "test" / "002.png").resolve()
    assert gallery.image_file(str(tmp_path), "../etc/passwd") is None
    assert gallery.image_file(None, "test/002.png") is None
    from cxrdemo.data.naming import content_hash

    assert gallery.image_file(str(tmp_path), "test/002.png", content_hash(tmp_path / "test" / "002.png")) is not None
    assert gallery.image_file(str(tmp_path), "test/002.png", "0" * 12) is None  # another file under that name
    assert gallery.data_root("demo").endswith("demo_data") and gallery.data_root(str(tmp_path / "gone")) is None


@pytest.mark.slow
def test_sweep_repeats_each_recipe_with_seeds_and_compare_groups_them(ds, store, monkeypatch):
    import json
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from cxrdemo.views import compare, seeds, trainer_form

    configs, _ = trainer_form.sweep_configs(TrainConfig(data=str(ds), backbone="cnn8", seed=5), ["cnn8"],
                                            ["none", "head"], seeds=2)
    assert [(str(c.freeze), c.seed) for c in configs] == [("none", 5), ("none", 6), ("head", 5), ("head", 6)]
    a, b, c = _train(ds, seed=1), _train(ds, seed=2), _train(ds, seed=1, lr=0.01)
    infos = runs.list_runs(store)
    groups = seeds.seed_groups(infos)
    assert [[i.run_id for i in g] for g in groups] == [[a.name, b.name]]
    table = compare.runs_table(infos)
    row = seeds.seed_table(table, groups).iloc[0]
    accs = table.set_index("run_id").loc[[a.name, b.name], "test_accuracy"].astype(float)
    assert row["test_accuracy"] == f"{accs.mean():.3f} ± {accs.std(ddof=1):.3f}"
    band = seeds.band_figure(groups)
    va = [runs.read_metrics(d)["val_acc"].to_numpy() for d in (a, b)]
    assert list(band.data[1].y) == pytest.approx(list((va[0] + va[1]) / 2))

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app_pages" / "compare.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    specs = [json.loads(ch.proto.spec) for ch in at.get("plotly_chart")]
    titles = [str((s["layout"].get("title") or {}).get("text", "")) for s in specs]
    (lapse,) = [s for s in specs if s.get("frames")]
    assert [f["name"] for f in lapse["frames"]] == ["1", "2"]
    assert any("mean over seeds" in t for t in titles) and any("click a cell" in t for t in titles)
    assert any("true class, per probe" in t for t in titles)
    text = " ".join(m.value for m in at.markdown)
    assert "95% interval" in text and "on these 8 images" in text
    assert at.multiselect(key="probe_runs").value == [a.name, b.name, c.name]
    at.multiselect(key="probe_runs").set_value([c.name]).run()
    assert not at.exception and not at.error


@pytest.mark.parametrize("backbone", ["cnn8", "resnet18"])
def test_head_only_probes_equal_the_full_network_computation(backbone):
    import torch

    from cxrdemo.model import backbones, cam

    torch.manual_seed(0)
    net = backbones.build_backbone(backbone, 2)
    net.set_freeze(len(net.trunk))
    net.train()
    x = torch.rand(4, 3, 64, 64)
    full_p, full_m = probes.heatmaps(net, x)
    panel = probes.Panel(__import__("pathlib").Path("."), torch.zeros(4, 1, 64, 64, dtype=torch.uint8))
    assert cam.suffix(net) is not None
    acts = probes._activations(net, x)
    p, m = probes.heatmaps(net, x, acts)
    np.testing.assert_allclose(p, full_p, atol=1e-5)
    assert np.abs(m.astype(int) - full_m.astype(int)).max() <= 1  # the same resize and scaling as the library's
    assert net.training and all(not q.requires_grad for q in net.trunk.parameters()) and panel.activations is None


def test_head_only_runs_read_the_probe_activations_off_the_feature_pass(monkeypatch):
    import torch

    from cxrdemo.model import backbones, train

    torch.manual_seed(0)
    net = backbones.build_backbone("cnn8", 2)
    net.set_freeze(len(net.trunk))
    images = torch.randint(0, 255, (10, 1, 48, 48), dtype=torch.uint8)
    plain = train._Inputs(train.preprocessing_for(TrainConfig(img_size=48)))
    idx = [1, 4, 9]
    panel = probes.Panel(__import__("pathlib").Path("."), images[idx], indices=tuple(idx), source_rows=10)
    with probes.capture_activations(panel, net):
        feats = train._trunk_features(net, images, plain, batch_size=4)  # batches 0-3, 4-7, 8-9
    assert feats.shape[0] == 10 and panel.activations is not None
    torch.testing.assert_close(panel.activations, probes._activations(net, plain(images[idx])))
    # a pass that is not the whole validation split leaves them to record_epoch
    part = probes.Panel(panel.folder, images[idx], indices=tuple(idx), source_rows=10)
    with probes.capture_activations(part, net):
        train._trunk_features(net, images[:8], plain, batch_size=4)
    assert part.activations is None


@pytest.mark.slow
def test_head_only_probes_are_the_same_for_the_same_seed(ds):
    a, b = _train(ds, seed=3, freeze="head"), _train(ds, seed=3, freeze="head")
    ta, tb = probes.read_timeline(a), probes.read_timeline(b)
    assert ta.epochs == [1, 2] and np.array_equal(ta.probs, tb.probs) and np.array_equal(ta.heatmaps, tb.heatmaps)
    assert set(runs.read_metrics(a)["path"]) == {"cached-features"}


def test_predictions_carry_calibrated_probabilities_and_the_90_percent_set(tmp_path):
    from scipy.special import softmax

    from cxrdemo.model import conformal

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (40, 2))
    y = rng.integers(0, 2, 40)
    names = [(f"test/{i:02d}.png", f"{i:012x}") for i in range(40)]
    # a planted temperature of 2 halves every logit: p = softmax(z / 2), raw stays softmax(z)
    record = conformal.fit_conformal(softmax(logits / 2, 1), y, 0.90, ("NORMAL", "PNEUMONIA"))
    assert record.ok
    p = predictions.from_logits(names, ("NORMAL", "PNEUMONIA"), y, logits, temperature=2.0, threshold=0.3,
                                record=record)
    predictions.write(p, tmp_path / predictions.FILE)
    back = predictions.read(tmp_path / predictions.FILE)
    np.testing.assert_allclose(back.probs, softmax(logits / 2, 1), atol=1e-6)
    np.testing.assert_allclose(back.raw, softmax(logits, 1), atol=1e-6)
    assert (back.y_pred == (softmax(logits, 1)[:, 1] >= 0.3)).all()  # the decision on the raw scale
    # the set never contradicts the predicted class, and holds more than it when the model is unsure
    assert back.sets[np.arange(40), back.y_pred].all()
    assert back.sets.sum(1).max() == 2 and back.sets.sum(1).min() == 1
    biased = predictions.from_logits(names, ("NORMAL", "PNEUMONIA"), y, logits, temperature=2.0, bias=(0.0, 1.5))
    np.testing.assert_allclose(biased.probs, softmax(logits / 2 + np.array([0.0, 1.5]), 1))  # the class bias too
    from cxrdemo.views import gallery

    cell = gallery.cell_images(back, 0, 1)  # NORMAL images called PNEUMONIA: their sets hold PNEUMONIA
    assert len(cell) and all("PNEUMONIA" in s for s in cell["prediction_set"])
    assert cell["p_predicted"].tolist() == sorted(back.probs[(y == 0) & (back.y_pred == 1), 1], reverse=True)
    assert "calibrated" in gallery.probability_note(back)
    header = (tmp_path / predictions.FILE).read_text().splitlines()[0].split(",")
    assert header == ["image", "hash", "true_class", "p_NORMAL", "p_PNEUMONIA", "raw_p_NORMAL", "raw_p_PNEUMONIA",
                      "set_90", "predicted_class"]
    # temperature 1 and no record: the network's own softmax, no set column
    plain = predictions.from_logits(names, ("NORMAL", "PNEUMONIA"), y, logits)
    np.testing.assert_allclose(plain.probs, plain.raw)
    assert plain.sets is None and "set_90" not in predictions.to_csv_text(plain).splitlines()[0]


def test_older_prediction_files_read_back_and_damaged_ones_are_refused(tmp_path):
    from cxrdemo.errors import RunError

    old = tmp_path / "old.csv"
    old.write_text("image,hash,true_class,p_NORMAL,p_PNEUMONIA,predicted_class\n"
                   "test/a.png,aaaaaaaaaaaa,NORMAL,0.700000,0.300000,NORMAL\n")
    p = predictions.read(old)
    assert p.raw is None and p.sets is None and p.raw_probs.tolist() == [[0.7, 0.3]]
    bad = tmp_path / "bad.csv"
    bad.write_text("image,hash,true_class,p_NORMAL,p_PNEUMONIA,set_90,predicted_class\n"
                   "test/a.png,aaaaaaaaaaaa,NORMAL,0.700000,0.300000,NORMAL|COVID,NORMAL\n")
    with pytest.raises(RunError, match="damaged"):
        predictions.read(bad)


def test_the_timelapse_cache_key_changes_when_a_run_writes_a_new_epoch(tmp_path):
    import os

    from cxrdemo.views import numbers, timelapse

    d = tmp_path / "run"
    (d / "probes").mkdir(parents=True)
    assert timelapse.stamp({"r": d}) == (0,)  # no probes yet
    (d / "probes" / "epoch-001.npz").write_bytes(b"1")
    os.utime(d / "probes" / "epoch-001.npz", ns=(10**18, 10**18))
    first = timelapse.stamp({"r": d})
    (d / "probes" / "epoch-002.npz").write_bytes(b"2")
    os.utime(d / "probes" / "epoch-002.npz", ns=(2 * 10**18, 2 * 10**18))
    assert first == (10**18,) and timelapse.stamp({"r": d}) == (2 * 10**18,)
