"""faithfulness.py + scorecard.py: ROAD finds the region a planted model uses; the scorecard, its file and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn

from cxrdemo.cli.main import main
import dataclasses
import re

from cxrdemo.diagnosis import explain, faithfulness, result, scorecard
from cxrdemo.diagnosis.predict import LoadedModel, model_input
from cxrdemo.errors import Cancelled
from cxrdemo.model.backbones import Net
from cxrdemo.model.checkpoint import Decision, Preprocessing
from cxrdemo.model.trust import Trust
from cxrdemo.views import heatmaps
from tests.helpers import make_patch_dataset

SIZE, STRIPES = 64, 32  # narrow stripes: RandomCAM mixes many of them, so random maps average out


class StripeEnergy(nn.Module):
    """Feature channel i = the squared (normalised) image inside vertical stripe i, zero elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks = torch.zeros(STRIPES, SIZE, SIZE)
        for i in range(STRIPES):
            masks[i, :, i * SIZE // STRIPES:(i + 1) * SIZE // STRIPES] = 1
        return x[:, :1] ** 2 * masks


def _planted() -> tuple[LoadedModel, torch.Tensor]:
    """A model whose decision depends only on the texture energy of the image's left half, and a noisy image."""
    image = torch.from_numpy(np.random.default_rng(0).normal(124, 40, (SIZE, SIZE)).clip(0, 255).astype(np.uint8))[None]
    head = nn.Linear(STRIPES, 2)
    net = Net("cnn5", [nn.Sequential(StripeEnergy(), nn.Identity())], nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                                                                    nn.Flatten()), head)
    with torch.no_grad():
        left = net.pool(net.trunk[0](model_input_like(image)))[0, : STRIPES // 2].sum()
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1, : STRIPES // 2] = 10 / left  # removing 20% of the left energy moves the logit by ~2
        head.bias[1] = -10 + 2.2  # p(left) ~ 0.9 on the intact image
    net.eval().requires_grad_(False)
    return LoadedModel(net, ("right", "left"), Preprocessing(SIZE), Decision(), "planted", Path(".")), image


def model_input_like(image: torch.Tensor) -> torch.Tensor:
    from cxrdemo import data

    return data.normalize_batch(image[None], data.IMAGENET_MEAN, data.IMAGENET_STD)


def _half(left: bool) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.float32)
    m[:, : SIZE // 2] = 1.0
    # a gentle ramp inside the half, so the map has an order of its own (not only ties)
    m *= np.linspace(1.0, 0.9, SIZE, dtype=np.float32)[None, :]
    return m if left else m[:, ::-1].copy()


def test_the_planted_model_looks_at_the_left_half():
    model, image = _planted()
    p = torch.softmax(model.net(model_input(model, image)), 1)[0, 1]
    assert 0.85 < float(p) < 0.95


def test_a_map_of_the_region_the_model_uses_scores_high_and_the_opposite_map_low():
    model, image = _planted()
    curves = faithfulness.road_curves(model, image, np.stack([_half(True), _half(False)]), 1)
    left, right = curves.scores
    assert left > 0.15 and right < -0.15, curves.scores
    # removing the highlighted left pixels lowers p(left); removing the right half leaves it
    assert curves.without_most[0, 0] < curves.p_before - 0.2
    assert abs(curves.without_most[1, 0] - curves.p_before) < 0.02


def _measure(model: LoadedModel, image: torch.Tensor, cam: np.ndarray, target: int = 1, **kwargs):
    """The page's way: the image's one result, a heatmap of class `target`, then its faithfulness."""
    res = result.assess_image(model, image)
    return faithfulness.measure(model, res, explain.Heatmap("map", target, cam), **kwargs)


def test_the_reading_says_points_at_only_for_the_map_that_beats_random_maps():
    model, image = _planted()
    good = _measure(model, image, _half(True), percentiles=(80, 60))
    bad = _measure(model, image, _half(False), percentiles=(80, 60))
    assert good.beats_chance and not bad.beats_chance
    assert good.score > good.random_mean + good.random_sd
    assert len(good.random_scores) == 5 and good.random_sd > 0
    reading = heatmaps.faithfulness_reading(good)
    assert "points at what the model uses" in reading and re.search(r"lowers p\(left\) from 9\d\.\d% to", reading)
    assert "no better than chance" in heatmaps.faithfulness_reading(bad) and "points at" not in \
        heatmaps.faithfulness_reading(bad)
    # Diagnosis's own setting (one percentile: remove 20%) tells the two maps apart as well
    live = [_measure(model, image, m, seeds=5) for m in (_half(True), _half(False))]
    assert live[0].percentiles == faithfulness.LIVE_PERCENTILES == (80,)
    assert live[0].beats_chance and not live[1].beats_chance
    d = good.to_dict()
    assert d["removed_percent"] == [20, 40] and d["beats_chance"] is True and json.dumps(d)


def test_road_curves_reproduce_the_librarys_road_combined():
    model, image = _planted()
    cam = np.random.default_rng(3).random((SIZE, SIZE)).astype(np.float32)  # no ties: ranking changes nothing
    ours = faithfulness.road_curves(model, image, cam, 1, faithfulness.FULL_PERCENTILES, seed=7).scores[0]
    torch.manual_seed(7)
    lib = ROADCombined(percentiles=list(faithfulness.FULL_PERCENTILES))(
        model_input(model, image), faithfulness.ranked(cam, 7)[None], [ClassifierOutputSoftmaxTarget(1)], model.net)
    assert ours == pytest.approx(float(lib[0]), abs=0.01)


def test_ranks_break_ties_so_a_share_is_a_share():
    cam = np.zeros((10, 10), np.float32)
    cam[:2] = 1.0  # 20% hot, 80% tied at zero
    r = faithfulness.ranked(cam)
    assert len(np.unique(r)) == 100 and r.min() == 0 and r.max() == 1
    assert (r[:2] > r[2:].max()).all()  # the order of distinct values is kept
    assert np.array_equal(r, faithfulness.ranked(cam))  # seeded


def test_a_calibration_hook_changes_the_probabilities_of_the_reading():
    model, image = _planted()
    hot = faithfulness.road_curves(model, image, _half(True), 1, (80,))
    cool = faithfulness.road_curves(model, image, _half(True), 1, (80,), to_probs=lambda z: torch.softmax(z / 4, -1))
    logits = model.net(model_input(model, image))[0]
    assert cool.p_before == pytest.approx(float(torch.softmax(logits / 4, 0)[1]), abs=1e-5)
    assert cool.p_before < hot.p_before


def test_the_reading_speaks_in_the_calibrated_probability_the_bar_shows():
    model, image = _planted()
    hot = dataclasses.replace(model, trust=Trust(temperature=3.0))  # a calibrated model: p moves towards 50%
    res = result.assess_image(hot, image)
    f = faithfulness.measure(hot, res, explain.Heatmap("map", 1, _half(True)), seeds=2)
    assert f.p_before == float(res.probs[1])  # the very number on the bar
    raw = float(torch.softmax(model.net(model_input(model, image)), 1)[0, 1])
    assert abs(f.p_before - raw) > 0.1  # and not the network's own softmax
    # the curves' own probability of the intact image (computed when no result is passed) is the calibrated one
    curves = faithfulness.road_curves(hot, res.image, _half(True), 1, (80,))
    assert curves.p_before == pytest.approx(f.p_before, abs=1e-6)
    assert f"from {100 * f.p_before:.1f}%" in heatmaps.faithfulness_reading(f)


def test_measure_leaves_the_callers_random_streams_alone():
    model, image = _planted()
    np.random.seed(1)
    torch.manual_seed(1)
    _measure(model, image, _half(True), seeds=2, percentiles=(80,))
    a, b = np.random.random(), torch.rand(1).item()
    np.random.seed(1)
    torch.manual_seed(1)
    assert (np.random.random(), torch.rand(1).item()) == (a, b)


# ---------------------------------------------------------------- scorecard

def _patch_images(make, n: int) -> torch.Tensor:
    rng = np.random.default_rng(11)
    return torch.from_numpy(np.stack([make(rng, i % 2 == 0)[0] for i in range(n)]))[:, None]


@pytest.mark.slow
def test_scorecard_table_intervals_progress_and_choice(patch_model, make_patch_image):
    seen = []
    table = scorecard.score_methods(patch_model, _patch_images(make_patch_image, 4), ["GradCAM", "EigenCAM"], n=4,
                                    percentiles=(80,), progress=lambda d, t, m: seen.append((d, t)))
    rows = {r["method"]: r for r in table["rows"]}
    assert list(rows) == ["GradCAM", "EigenCAM", scorecard.RANDOM]
    assert seen[-1] == (12, 12) and len(seen) == 12
    for r in rows.values():
        assert r["n"] == 4 and r["low"] <= r["mean"] <= r["high"] and r["seconds_per_image"] > 0
        assert r["mean"] == pytest.approx(np.mean(r["scores"]), abs=1e-4)
    # on the patch images the GradCAM map finds the patch: it beats the random maps
    assert rows["GradCAM"]["mean"] > rows[scorecard.RANDOM]["mean"]
    assert table["most_faithful"] == max(("GradCAM", "EigenCAM"), key=lambda m: rows[m]["mean"])


def test_most_faithful_chooses_among_fast_methods_only():
    rows = [{"method": "ScoreCAM", "n": 2, "mean": 0.5, "seconds_per_image": 30.0},
            {"method": "GradCAM", "n": 8, "mean": 0.2, "seconds_per_image": 0.1},
            {"method": "EigenCAM", "n": 8, "mean": 0.1, "seconds_per_image": 0.3},
            {"method": scorecard.RANDOM, "n": 8, "mean": 0.9, "seconds_per_image": 0.1}]
    assert scorecard.most_faithful({"rows": rows}) == "GradCAM"
    assert scorecard.most_faithful({"rows": rows}, max_seconds=60) == "ScoreCAM"
    assert scorecard.most_faithful({"rows": rows[:1]}) is None


def test_scorecard_stops_when_asked(patch_model, make_patch_image):
    with pytest.raises(Cancelled):
        scorecard.score_methods(patch_model, _patch_images(make_patch_image, 2), ["GradCAM"], n=2,
                                percentiles=(80,), should_stop=lambda: True)


def test_scorecard_file_round_trip_and_a_retrained_model_drops_it(patch_store):
    table = {"rows": [{"method": "GradCAM", "n": 1, "mean": 0.1, "seconds_per_image": 0.1}], "most_faithful": "GradCAM"}
    assert scorecard.read_scorecard(patch_store.run) is None
    path = scorecard.write_scorecard(patch_store.run, table)
    assert path.name == "cam_scorecard.json"
    assert scorecard.read_scorecard(patch_store.run)["rows"] == table["rows"]
    with open(patch_store.run / "model.pt", "ab") as f:
        f.write(b"retrained")
    assert scorecard.read_scorecard(patch_store.run) is None


def test_cli_cam_scorecard_writes_the_table(patch_store, tmp_path, capsys):
    data = make_patch_dataset(tmp_path / "data", {"test": 2}, seed=5)
    rc = main(["cam-scorecard", "--run", str(patch_store.run), "--data", str(data), "--n", "2",
               "--methods", "GradCAM"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and [r["method"] for r in out["rows"]] == ["GradCAM", scorecard.RANDOM]
    assert scorecard.read_scorecard(patch_store.run)["most_faithful"] == "GradCAM"


@pytest.mark.parametrize("argv, words", [
    (["--n", "0"], "--n must be at least 1"),
    (["--methods", "Magic"], "Unknown heatmap method"),
    (["--split", "val"], "no 'val' images"),
])
def test_cli_cam_scorecard_bad_input_is_one_sentence_and_exit_2(patch_store, tmp_path, capsys,
                                                               argv, words):
    data = make_patch_dataset(tmp_path / "data", {"test": 2}, seed=5)
    rc = main(["cam-scorecard", "--run", str(patch_store.run), "--data", str(data), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and err.count("\n") == 1


def test_cli_cam_scorecard_classes_must_match(patch_store, tiny_dataset, capsys):
    rc = main(["cam-scorecard", "--run", str(patch_store.run), "--data", str(tiny_dataset)])
    assert rc == 2 and "differ from the model's" in capsys.readouterr().err


def test_predict_cam_json_has_faithfulness(patch_store, make_patch_image, tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(make_patch_image(np.random.default_rng(2), True)[0]).save(img)
    rc = main(["predict", "--run", str(patch_store.run), "--cam", str(tmp_path / "o.png"), str(img)])
    line = json.loads(capsys.readouterr().out)
    f = line["faithfulness"]
    assert rc == 0 and f["class_name"] == line["class"] and f["percentiles"] == list(faithfulness.LIVE_PERCENTILES)
    assert len(f["random_scores"]) == 5 and isinstance(f["beats_chance"], bool) and f["reading"].startswith("Removing")
    assert f["p_before"] == pytest.approx(line["probabilities"][line["class"]], abs=1e-6)  # one number, one image


def test_explain_accepts_a_baseline_cam_class(patch_model, make_patch_image):
    from pytorch_grad_cam import RandomCAM

    img = torch.from_numpy(make_patch_image(np.random.default_rng(4), True)[0])[None]
    np.random.seed(0)
    a = explain.explain(patch_model, img, "RandomCAM", 1, cam_class=RandomCAM).cam
    np.random.seed(1)
    b = explain.explain(patch_model, img, "RandomCAM", 1, cam_class=RandomCAM).cam
    assert a.shape == (64, 64) and not np.allclose(a, b)
