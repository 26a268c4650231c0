"""Training end to end on tiny real-code-path runs: files, fast paths, initialisation from runs, faults."""

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial

import numpy as np
import pytest
import torch

from cxrdemo.cli.main import main as cli
from cxrdemo.errors import Cancelled
from cxrdemo.model import checkpoint, metrics, train
from cxrdemo.runs import store as runs
from cxrdemo.runs.worker import execute_run
from tests.helpers import make_square_dataset, tiny_config


@pytest.fixture(scope="module")
def ds2(tmp_path_factory):
    return make_square_dataset(tmp_path_factory.mktemp("ds2"))


@pytest.fixture(scope="module")
def ds4(tmp_path_factory):
    return make_square_dataset(tmp_path_factory.mktemp("ds4"), ("COVID", "Lung_Opacity", "Normal", "Viral"), (6, 2, 2))


pytestmark = pytest.mark.usefixtures("store")  # every test trains in conftest's private run store
_cfg = partial(tiny_config, epochs=2, step_size=0)


def _train(config):
    d = runs.create_run(config)
    status = execute_run(d)
    return d, status


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["spec:0.9", "sens:0.9"])
def test_operating_point_rule_is_chosen_on_validation_and_saved(ds2, rule):
    from cxrdemo.diagnosis import predict

    d, status = _train(_cfg(ds2, epochs=2, threshold=rule))
    assert status["state"] == "completed", status.get("error")
    model = predict.load_model(str(d), allow_path=True)
    y, probs, _ = predict.predict_split(model, str(ds2), "val")
    assert model.decision.rule == rule
    assert model.decision.value == pytest.approx(metrics.choose_threshold(y, probs, rule))
    m = metrics.classification_metrics(y, probs, model.classes, model.decision.value)
    assert m["specificity" if rule.startswith("spec") else "sensitivity"] >= 0.9
    assert runs.read_test_metrics(d)["threshold"] == model.decision.value


@pytest.mark.slow
def test_same_run_id_in_two_stores_logs_to_its_own_file(ds2, tmp_path, monkeypatch):
    # One process trains several runs (a Ray worker, this test session); ids are unique only within a store.
    import datetime
    import logging

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2026, 1, 1)

    monkeypatch.setattr(runs, "datetime", Frozen)
    dirs = []
    for store in ("a", "b"):
        dirs.append(runs.create_run(_cfg(ds2, epochs=1), tmp_path / store))
        assert execute_run(dirs[-1])["state"] == "completed"
    for d in dirs:
        assert "completed" in (d / "log.txt").read_text()
    assert not logging.getLogger("cxrdemo.run.20260101-000000-cnn8-none").handlers  # closed, no file left open


@pytest.mark.slow
def test_short_training_writes_a_complete_run(ds2):
    d, status = _train(_cfg(ds2, epochs=3, threshold="val"))
    assert status["state"] == "completed", status.get("error")
    df = runs.read_metrics(d)
    assert list(df["epoch"]) == [1, 2, 3]
    assert df[["train_loss", "val_loss", "val_acc", "val_auroc", "seconds", "images_per_s"]].notna().all().all()
    assert (df["trainable_params"] == 1_172_770).all()
    model = checkpoint.load(d / "model.pt")
    assert model.classes == ("NORMAL", "PNEUMONIA") and model.preprocessing == checkpoint.Preprocessing(32)
    assert model.decision.rule == "val" and 0 < model.decision.value < 1 and model.config["backbone"] == "cnn8"
    assert not (d / checkpoint.BEST_EPOCH_FILE).exists()  # model.pt holds the best epoch now
    tm = runs.read_test_metrics(d)
    assert tm["n"] == 8 and len(tm["probs"]) == 8 and np.array(tm["confusion"]).sum() == 8
    # written together with the decision: temperature, sets at 90% and 95% (4 val images per class: too few), domain
    assert set(model.records) == {"calibration", "conformal", "domain"}
    assert model.records["calibration"]["temperature"] > 0 and model.records["domain"]["n_train"] == 20
    assert [(c["level"], c["ok"]) for c in model.records["conformal"]["levels"]] == [(0.9, False), (0.95, False)]
    cal = tm["calibration"]
    assert 0 <= cal["ece_after"] <= 1 and cal["ece_before_ci"][0] <= cal["ece_before"] <= cal["ece_before_ci"][1]
    assert [c["level"] for c in tm["coverage"]] == [0.9, 0.95] and "needs at least 9" in tm["coverage"][0]["reason"]
    assert np.allclose(np.array(tm["calibrated_probs"]).sum(1), 1, atol=1e-5)
    meta = runs.read_json(d / "config.json")
    assert meta["dataset"]["classes"] == ["NORMAL", "PNEUMONIA"]
    assert "completed" in (d / "log.txt").read_text()


@pytest.mark.slow
def test_four_classes_from_folder_names(ds4):
    d, status = _train(_cfg(ds4, epochs=1))
    assert status["state"] == "completed", status.get("error")
    tm = runs.read_test_metrics(d)
    assert tm["classes"] == ["COVID", "Lung_Opacity", "Normal", "Viral"] and len(tm["confusion"]) == 4


@pytest.mark.slow
def test_cached_features_train_the_same_head_as_the_ordinary_path(ds2, monkeypatch):
    cfg = _cfg(ds2, backbone="resnet18", freeze="head", epochs=2, lr=1e-2)
    fast, _ = _train(cfg)
    assert set(runs.read_metrics(fast)["path"]) == {"cached-features"}
    monkeypatch.setattr(train, "FEATURE_CACHE", False)
    slow, _ = _train(cfg)
    assert set(runs.read_metrics(slow)["path"]) == {"full"}
    a = checkpoint.load(fast / "model.pt").state_dict
    b = checkpoint.load(slow / "model.pt").state_dict
    assert not torch.equal(a["head.0.weight"], torch.zeros_like(a["head.0.weight"]))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)


@pytest.mark.slow
def test_gradual_unfreezes_after_T_and_counts_parameters(ds2):
    d, status = _train(_cfg(ds2, backbone="cnn5", freeze="gradual:1", epochs=2))
    assert status["state"] == "completed", status.get("error")
    df = runs.read_metrics(d)
    assert list(df["frozen_groups"]) == [5, 0]
    assert list(df["trainable_params"]) == [1026, 1_604_898]
    assert list(df["path"]) == ["cached-features", "full"]


@pytest.mark.slow
def test_run_init_same_classes_loads_everything_and_frozen_groups_stay_fixed(ds2):
    src, _ = _train(_cfg(ds2, backbone="cnn5", epochs=1))
    source_file = checkpoint.load(src / "model.pt")
    source = source_file.state_dict
    net, note = train.build_model(_cfg(ds2, backbone="cnn5", init=f"run:{src.name}"), ("NORMAL", "PNEUMONIA"),
                                  source_file)
    assert "trunk and head" in note
    for k, v in net.state_dict().items():
        assert torch.equal(v, source[k]), k
    d, status = _train(_cfg(ds2, backbone="cnn5", init=f"run:{src.name}", freeze="2", epochs=1, lr=1e-2))
    assert status["state"] == "completed", status.get("error")
    after = checkpoint.load(d / "model.pt").state_dict
    for k in after:
        if k.startswith(("trunk.0.", "trunk.1.")):
            assert torch.equal(after[k], source[k]), k  # weights and BN statistics untouched
    assert not torch.equal(after["trunk.4.0.weight"], source["trunk.4.0.weight"])


@pytest.mark.slow
def test_run_init_with_other_classes_keeps_trunk_and_new_head(ds2, ds4):
    src, _ = _train(_cfg(ds2, backbone="cnn5", epochs=1))
    source_file = checkpoint.load(src / "model.pt")
    source = source_file.state_dict
    d, status = _train(_cfg(ds4, backbone="cnn5", init=f"run:{src.name}", epochs=1))
    assert status["state"] == "completed", status.get("error")
    net, note = train.build_model(_cfg(ds4, backbone="cnn5", init=f"run:{src.name}"), ("a", "b", "c", "d"),
                                  source_file)
    assert "new head" in note and net.head[-1].out_features == 4
    assert torch.equal(net.state_dict()["trunk.3.0.weight"], source["trunk.3.0.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("make_ref, words", [
    (lambda src: "run:nope-123", "No run"),
    (lambda src: "run:../../etc", "not a valid run id"),
    (lambda src: f"run:{src}", "trained a cnn5, not a cnn8"),
])
def test_bad_run_init_fails_with_a_sentence(ds2, make_ref, words):
    src, _ = _train(_cfg(ds2, backbone="cnn5", epochs=1))
    d, status = _train(_cfg(ds2, backbone="cnn8", init=make_ref(src.name), epochs=1))
    assert status["state"] == "failed" and words in status["error"]


def test_run_init_from_failed_run_is_refused(ds2):
    bad, status = _train(_cfg(ds2, backbone="cnn5", init="run:missing-run", epochs=1))
    assert status["state"] == "failed"
    _, status = _train(_cfg(ds2, backbone="cnn5", init=f"run:{bad.name}", epochs=1))
    assert status["state"] == "failed" and "is failed, not completed" in status["error"]


def test_cancel_between_batches(ds2):
    d = runs.create_run(_cfg(ds2))
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3
    with pytest.raises(Cancelled):
        train.fit(_cfg(ds2), d, should_stop=stop)
    assert len(calls) == 4


@pytest.mark.slow
def test_early_stopping_on_val_loss(ds2, monkeypatch):
    losses = iter([0.5, 0.6, 0.7, 0.4, 0.3])
    real = train.evaluate

    def fake(model, x, y, inputs, classes, threshold=None, weight=None, amp=None):
        loss, m, p = real(model, x, y, inputs, classes, threshold, weight, amp)
        return (next(losses), m, p) if threshold is None and len(y) == 8 and model.training is False else (loss, m, p)
    monkeypatch.setattr(train, "evaluate", fake)
    d, status = _train(_cfg(ds2, epochs=5, patience=2))
    assert status["state"] == "completed"
    assert len(runs.read_metrics(d)) == 3
    assert checkpoint.load(d / "model.pt").epoch == 1


@pytest.mark.slow
def test_select_by_val_auroc_keeps_the_best_ranking_epoch(ds2, monkeypatch):
    aurocs = iter([0.7, 0.9, 0.8, 0.85, 0.5])  # four epochs, then the test split
    real = train.evaluate

    def fake(model, x, y, inputs, classes, threshold=None, weight=None, amp=None):
        loss, m, p = real(model, x, y, inputs, classes, threshold, weight, amp)
        if threshold is None and len(y) == 8 and model.training is False:
            return loss, {**m, "auroc": next(aurocs)}, p
        return loss, m, p
    monkeypatch.setattr(train, "evaluate", fake)
    d, status = _train(_cfg(ds2, epochs=4, select="val_auroc", patience=2))
    assert status["state"] == "completed", status.get("error")
    assert checkpoint.load(d / "model.pt").epoch == 2
    assert len(runs.read_metrics(d)) == 4  # epochs 3 and 4 are the two without a gain: stopped after 4


@pytest.mark.slow
def test_corrupt_files_are_skipped_and_reported(ds2, tmp_path):
    import shutil

    data = tmp_path / "messy"
    shutil.copytree(ds2, data)
    good = next((data / "train" / "NORMAL").glob("*.png")).read_bytes()
    (data / "train" / "NORMAL" / "truncated.png").write_bytes(good[: len(good) // 3])
    (data / "train" / "NORMAL" / "notes.png").write_text("this is not an image")
    (data / "train" / "PNEUMONIA" / "Thumbs.db").write_bytes(b"\0" * 50)
    d, status = _train(_cfg(data, epochs=1))
    assert status["state"] == "completed", status.get("error")
    meta = runs.read_json(d / "config.json")
    reported = json.dumps(meta)
    assert "truncated.png" in reported and "notes.png" in reported


@pytest.mark.slow
def test_evaluate_and_predict_agree_with_the_model(ds2, capsys):
    d, _ = _train(_cfg(ds2, epochs=2))
    tm = runs.read_test_metrics(d)
    capsys.readouterr()
    assert cli(["evaluate", "--run", d.name, "--data", str(ds2)]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["accuracy"] == pytest.approx(tm["accuracy"]) and ev["auroc"] == pytest.approx(tm["auroc"])
    assert ev["confusion"] == tm["confusion"]
    from cxrdemo import data
    first = data.scan_dataset(str(ds2)).splits["test"][0][0]
    assert cli(["predict", "--run", d.name, first]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the page and the CLI show calibrated probabilities: the same numbers the run's test measured
    assert line["probabilities"]["PNEUMONIA"] == pytest.approx(tm["calibrated_probs"][0][1], abs=1e-5)
    assert isinstance(line["in_domain"], bool) and line["domain_score"] > 0
    assert line["prediction_set"] is None and "Too few validation images" in line["notes"][0]  # 4 val images a class
    assert ev["calibration"]["ece_after"] == pytest.approx(tm["calibration"]["ece_after"], abs=1e-5)
    assert [c["level"] for c in ev["coverage"]] == [0.9, 0.95]


@pytest.mark.slow
def test_worker_killed_mid_epoch_leaves_readable_files(ds2):
    cfg = _cfg(ds2, backbone="cnn13", epochs=200, img_size=48, batch_size=2)
    d = runs.create_run(cfg)
    env = {**os.environ, "CXRDEMO_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cxrdemo", "worker", "--run-dir", str(d)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(runs.read_metrics(d)) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert len(runs.read_metrics(d)) >= 2, "worker made no progress"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    s = runs.read_status(d)
    assert s["state"] == "interrupted" and s["epoch"] >= 2
    df = runs.read_metrics(d)
    assert len(df) >= 2 and df.notna()[["train_loss", "val_loss"]].all().all()
    # model.pt is written only when training ends: a killed worker leaves its best epoch in best-epoch.pt
    assert not (d / "model.pt").exists() and checkpoint.load_best_epoch(d)[1] >= 1
    # a write cut short leaves at most a hidden temp file, never a partial file under a real name
    assert all(p.name.startswith(".") for p in d.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.slow
def test_cli_train_prints_id_then_json_and_bad_input_exits_2(ds2, capsys):
    assert cli(["train", "--data", str(ds2), "--backbone", "cnn8", "--img-size", "32", "--epochs", "1",
                "--batch-size", "8", "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert runs.RUN_ID_RE.match(out[0]) and json.loads(out[-1])["run"] == out[0]
    assert cli(["train", "--data", str(ds2), "--epochs", "0"]) == 2
    assert "Epochs must be at least 1" in capsys.readouterr().err
    assert cli(["train", "--data", "/no/such/folder", "--epochs", "1"]) == 2
    assert cli(["train", "--data", str(ds2), "--backbone", "resnet19"]) == 2
    assert "Known backbones" in capsys.readouterr().err
    made = set(runs.store_dir().iterdir())
    assert cli(["train", "--data", str(ds2), "--init", "run:no-such-run"]) == 2
    assert "Cannot start from run no-such-run" in capsys.readouterr().err
    assert cli(["train", "--data", str(ds2), "--backbone", "cnn5", "--freeze", "7"]) == 2
    assert "too high" in capsys.readouterr().err
    assert set(runs.store_dir().iterdir()) == made  # refused before any run folder was created


@pytest.mark.slow
def test_weight_average_is_what_gets_saved(ds2):
    plain, _ = _train(_cfg(ds2, backbone="cnn5", epochs=2, lr=1e-2))
    averaged, status = _train(_cfg(ds2, backbone="cnn5", epochs=2, lr=1e-2, ema=0.9))
    assert status["state"] == "completed", status.get("error")
    a = checkpoint.load(plain / "model.pt").state_dict
    b = checkpoint.load(averaged / "model.pt").state_dict
    assert a.keys() == b.keys()  # a plain Net: prediction needs nothing special
    w_plain, w_avg = a["head.0.weight"], b["head.0.weight"]
    assert not torch.equal(w_plain, w_avg)  # the same trajectory, averaged
    assert runs.read_json(averaged / "config.json")["config"]["ema"] == 0.9


@pytest.mark.slow
def test_bf16_training_keeps_float32_weights_and_follows_the_fp32_run(ds2):
    full, _ = _train(_cfg(ds2, backbone="cnn5", epochs=2, precision="fp32"))
    mixed, status = _train(_cfg(ds2, backbone="cnn5", epochs=2, precision="bf16"))
    assert status["state"] == "completed", status.get("error")
    assert runs.read_json(mixed / "config.json")["precision"] == "bfloat16 mixed precision"
    assert runs.read_json(full / "config.json")["precision"] == "float32"
    state = checkpoint.load(mixed / "model.pt").state_dict
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    a, b = runs.read_metrics(full), runs.read_metrics(mixed)
    # Same seed, same batches: only the forward's rounding differs, so the first epoch's loss is close.
    assert abs(a["train_loss"][0] - b["train_loss"][0]) < 0.05 * a["train_loss"][0]
    assert not np.isclose(a["train_loss"][0], b["train_loss"][0], rtol=0, atol=1e-7)  # bf16 really ran
    tm = runs.read_test_metrics(mixed)
    assert len(tm["probs"]) == 8 and np.isfinite(tm["probs"]).all()


def test_weight_average_warms_up_then_settles_to_its_decay():
    update = train.ema_update(0.99)
    avg, cur = [torch.zeros(3)], [torch.ones(3)]
    for n, value in enumerate((2.0, 4.0, 6.0), 1):  # warm-up: the plain mean of the steps so far
        update(avg, [torch.full((3,), value)], torch.tensor(n))
    torch.testing.assert_close(avg[0], torch.full((3,), (0 + 2 + 4 + 6) / 4))
    avg = [torch.zeros(3)]
    update(avg, cur, torch.tensor(10_000))  # settled: the configured decay
    torch.testing.assert_close(avg[0], torch.full((3,), 0.01))
    counters = [torch.tensor(3)]
    update(counters, [torch.tensor(7)], torch.tensor(5))
    assert int(counters[0]) == 7
