"""model.pt has one owner (model/checkpoint): formats, validation of every field, records, the demo model's logits."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrdemo import paths
from cxrdemo.data.shrink import shrink_policy
from cxrdemo.cli.main import main as cli
from cxrdemo.errors import RunError
from cxrdemo.model import backbones, checkpoint
from cxrdemo.model.checkpoint import Decision, ModelFile, Preprocessing

DEMO_MODEL = paths.demo_run_dir() / "model.pt"
REFERENCE = Path(__file__).parent / "data" / "demo_logits.npz"
IMAGE = next((paths.DEMO_DATA_DIR / "test" / "NORMAL").glob("*.jpg"))


def _small(decision: Decision = Decision("spec:0.95", 0.25)) -> ModelFile:
    torch.manual_seed(0)
    net = backbones.build_backbone("cnn8", 2)
    return ModelFile("cnn8", ("NORMAL", "PNEUMONIA"), net.state_dict(), Preprocessing(32), decision, epoch=3,
                     val_loss=0.4, train_path="full", config={"backbone": "cnn8", "threshold": decision.rule})


def _format_1(model: ModelFile) -> dict:
    """What cxrdemo wrote before format 2 (save_model of ecfa98d), for the same content."""
    raw = model.to_dict()
    raw.update(format=checkpoint.FORMAT_1, num_classes=len(model.classes), threshold=model.decision.value)
    raw["preprocessing"] = {**raw["preprocessing"], "channels": 3}
    del raw["decision"]
    return raw


def _write(folder: Path, raw: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(raw, folder / "model.pt")
    return folder / "model.pt"


# ---------------------------------------------------------------- formats

def test_the_shipped_demo_model_carries_its_decision_and_the_trust_records():
    """Format 1 until `calibrate --run demo` rewrote it (weights untouched: the logits test below) as format 2."""
    model = checkpoint.load(DEMO_MODEL)
    raw = torch.load(DEMO_MODEL, weights_only=True)
    assert raw["format"] == checkpoint.FORMAT
    assert model.decision.rule == "spec:0.95" and model.decision.value == pytest.approx(0.0875, abs=1e-4)
    assert model.preprocessing == Preprocessing(224, "none", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert model.classes == ("NORMAL", "PNEUMONIA") and model.backbone == "cnn5"
    assert set(model.records) == {"calibration", "conformal", "domain"}
    assert model.records["domain"]["n_train"] == 4353 and model.records["domain"]["n_val"] == 488


def test_a_format_1_model_loads_and_is_upgraded_in_memory(tmp_path):
    raw = _format_1(_small())
    model = checkpoint.load(_write(tmp_path / "r", raw))
    assert torch.load(tmp_path / "r" / "model.pt", weights_only=True)["format"] == checkpoint.FORMAT_1  # untouched
    assert model.decision == Decision("spec:0.95", raw["threshold"]) and model.records == {}


@pytest.mark.parametrize("value, rule, expected", [
    (None, "spec:0.95", Decision()),  # no threshold saved: the most probable class decided
    (0.3, "argmax", Decision("val", 0.3)),  # older runs saved a threshold only with `val`
    (0.3, None, Decision("val", 0.3)),
    (0.3, "sens:0.9", Decision("sens:0.9", 0.3)),
])
def test_format_1_threshold_and_rule_become_one_decision(tmp_path, value, rule, expected):
    raw = _format_1(_small())
    raw["threshold"] = value
    if rule is None:
        del raw["config"]["threshold"]
    else:
        raw["config"]["threshold"] = rule
    assert checkpoint.load(_write(tmp_path / "r", raw)).decision == expected


def test_save_and_load_round_trip_in_format_2(tmp_path):
    model = _small()
    checkpoint.save(model, tmp_path / "model.pt")
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    assert raw["format"] == checkpoint.FORMAT and raw["decision"] == {"rule": "spec:0.95", "value": 0.25}
    assert "threshold" not in raw and "num_classes" not in raw
    assert raw["preprocessing"]["shrink"] == shrink_policy()  # the reader's step travels with the model
    back = checkpoint.load(tmp_path / "model.pt")
    assert back == model  # every field but the weights (compared below)
    assert all(torch.equal(back.state_dict[k], v) for k, v in model.state_dict.items())
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left


def test_an_unknown_or_newer_format_is_refused_with_a_sentence(tmp_path):
    raw = _small().to_dict()
    raw["format"] = "cxrdemo-model/3"
    with pytest.raises(RunError, match=r"has format 'cxrdemo-model/3', which this version of cxrdemo cannot read"):
        checkpoint.load(_write(tmp_path / "r", raw))
    del raw["format"]
    with pytest.raises(RunError, match="is not a cxrdemo model"):
        checkpoint.load(_write(tmp_path / "r", raw))


def test_rebuild_net_gives_the_saved_weights_in_eval_mode():
    model = _small()
    net = checkpoint.rebuild_net(model)
    assert not net.training
    assert all(torch.equal(net.state_dict()[k], v) for k, v in model.state_dict.items())


def test_update_records_rewrites_the_file_with_extra_records(tmp_path):
    path = tmp_path / "model.pt"
    checkpoint.save(_small(), path)
    sets = {"levels": [{"level": 0.9, "qhat": [0.8, 0.7], "n": [30, 30], "ok": True}]}
    checkpoint.update_records(path, calibration={"temperature": 1.7})
    updated = checkpoint.update_records(path, conformal=sets)
    assert checkpoint.load(path).records == updated.records == {"calibration": {"temperature": 1.7},
                                                                "conformal": sets}
    assert checkpoint.load(path).decision == Decision("spec:0.95", 0.25)  # the rest is kept
    with pytest.raises(ValueError, match="unknown model-file records"):
        checkpoint.update_records(path, temperature=1.7)
    with pytest.raises(RunError, match="its domain record is not a dictionary"):
        checkpoint.update_records(path, domain=[1, 2])
    assert "domain" not in checkpoint.load(path).records  # a refused record is never written


def test_the_best_epoch_file_round_trips_and_is_discarded(tmp_path):
    model = _small()
    checkpoint.save_best_epoch(tmp_path, model.state_dict, 2, 0.5, "full")
    state, epoch, val_loss, path = checkpoint.load_best_epoch(tmp_path)
    assert (epoch, val_loss, path) == (2, 0.5, "full") and state.keys() == model.state_dict.keys()
    checkpoint.discard_best_epoch(tmp_path)
    with pytest.raises(RunError, match="no finished epoch"):
        checkpoint.load_best_epoch(tmp_path)


def test_malicious_model_file_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    (tmp_path / "r").mkdir()
    torch.save({"state_dict": {}, "backbone": "cnn5", "x": Evil()}, tmp_path / "r" / "model.pt")
    with pytest.raises(RunError, match="damaged or unsafe"):
        checkpoint.load(tmp_path / "r" / "model.pt")
    assert not (tmp_path / "pwned").exists()


def test_garbage_model_file_is_reported(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "model.pt").write_bytes(b"garbage" * 10)
    with pytest.raises(RunError, match="damaged"):
        checkpoint.load(tmp_path / "r" / "model.pt")


# ---------------------------------------------------------------- malformed but safe files

def _set(path: str, value):
    """A change to a saved dict: `path` is 'key' or 'key.subkey'; value ... deletes it."""
    def change(raw: dict) -> None:
        *parents, key = path.split(".")
        target = raw
        for p in parents:
            target = target[p]
        if value is ...:
            del target[key]
        else:
            target[key] = value
    return change


MALFORMED = [  # (format, change, words of the sentence)
    ("1", _set("num_classes", ...), "it has no num_classes"),
    ("1", _set("num_classes", "2"), "its num_classes should be a whole number"),
    ("1", _set("num_classes", 3), "num_classes 3 differs from its 2 class names"),
    ("1", _set("threshold", "0.088"), "its decision threshold should be a number between 0 and 1"),
    ("1", _set("threshold", 7.0), "its decision threshold should be a number between 0 and 1"),
    ("2", _set("decision.value", "high"), "its decision threshold should be a number between 0 and 1"),
    ("2", _set("decision.value", None), "its decision rule spec:0.95 does not match its threshold None"),
    ("2", _set("decision.rule", "magic"), "its decision rule 'magic' is not argmax, val, spec:x or sens:x"),
    ("2", _set("decision", 0.088), "its decision should be a record"),
    ("2", _set("preprocessing.img_size", "224"), "its img_size should be a whole number from 32 to 1024"),
    ("2", _set("preprocessing.img_size", 0), "its img_size should be a whole number from 32 to 1024, not 0"),
    ("2", _set("preprocessing.img_size", 200000), "its img_size should be a whole number from 32 to 1024"),
    ("2", _set("preprocessing.intensity", "gamma"), "its intensity step 'gamma' is not one of none, equalize"),
    ("2", _set("preprocessing.mean", [0.5, math.nan, 0.5]), "its preprocessing mean should be 3 finite numbers"),
    ("2", _set("preprocessing.std", [0.2, 0.2]), "its preprocessing std should be 3 finite numbers"),
    ("2", _set("preprocessing.std", ["a", "b", "c"]), "its preprocessing std should be 3 finite numbers"),
    ("2", _set("preprocessing.resize", "centre crop"), "its resize step 'centre crop' is not the one"),
    ("2", _set("preprocessing.shrink", {"max_side": 1024, "method": "box", "max_aspect": 20}),
     "its shrink-on-read step"),
    ("2", _set("preprocessing", ...), "it has no preprocessing"),
    ("2", _set("classes", "NORMAL,PNEUMONIA"), "its classes should be a list of two or more different names"),
    ("2", _set("classes", [0, 1]), "its classes should be a list of two or more different names"),
    ("2", _set("state_dict", {"trunk.0.weight": [1.0, 2.0]}), "its weights (state_dict) should map names to tensors"),
    ("2", _set("state_dict", ...), "it has no state_dict"),
    ("2", _set("backbone", "resnet19"), "its backbone 'resnet19' is not one this version knows"),
    ("2", _set("backbone", 5), "its backbone should be text"),
    ("2", _set("head", "mlp"), "its head 'mlp' is not one of"),
    ("2", _set("dropout", "0.1"), "its dropout should be a number"),
    ("2", _set("epoch", -1), "its epoch should be a whole number"),
    ("2", _set("val_loss", "low"), "its val_loss should be a number"),
    ("2", _set("config", "cnn8"), "its config is not a dictionary"),
    ("2", _set("calibration", 1.7), "its calibration record is not a dictionary"),
]


def _malformed(fmt: str, change) -> dict:
    model = _small()
    raw = _format_1(model) if fmt == "1" else model.to_dict()
    change(raw)
    return raw


@pytest.mark.parametrize("fmt, change, words", MALFORMED)
def test_a_malformed_model_file_is_one_sentence_on_load(tmp_path, fmt, change, words):
    path = _write(tmp_path / "bad-run", _malformed(fmt, change))
    with pytest.raises(RunError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert message.startswith("The model file of run bad-run is damaged: ") and words in message
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence


@pytest.mark.parametrize("fmt, change, words", MALFORMED[::3] + [
    ("2", _set("state_dict", {"trunk.0.weight": torch.zeros(3)}), "The saved weights do not fit a cnn8"),
])
def test_predict_on_a_malformed_model_file_exits_2_with_one_sentence(tmp_path, capsys, fmt, change, words):
    folder = tmp_path / "bad-run"
    _write(folder, _malformed(fmt, change))
    assert cli(["predict", "--run", str(folder), str(IMAGE)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and words in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- the demo model predicts bit-identically

def test_demo_model_logits_are_bit_identical_to_before_the_model_file_redesign(tmp_path, monkeypatch):
    """Reference: the code of ecfa98d on the same images, one thread (tests/data/demo_logits.npz)."""
    from cxrdemo.diagnosis import predict

    monkeypatch.setenv("CXRDEMO_CACHE_DIR", str(tmp_path / "cache"))
    ref = np.load(REFERENCE)
    root = paths.DEMO_DATA_DIR / "test"
    files = [root / name for name in ref["names"]]
    assert len(files) == 20 and all(f.is_file() for f in files)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference was computed on one thread: reductions in the same order
    try:
        model = predict.load_model("demo")
        with torch.inference_mode():
            single = np.stack([model.net(predict.model_input(model, predict.prepare(
                model, predict.read_radiograph(str(f)).grey))).float()[0].numpy() for f in files])
            cached = model.preprocessing.load([(str(f), 0) for f in files], use_disk_cache=False)
            batch = model.net(predict.model_input(model, cached.images)).float().numpy()
    finally:
        torch.set_num_threads(threads)
    order = [Path(p).resolve() for p in cached.paths]
    batch = batch[[order.index(f.resolve()) for f in files]]
    assert single.dtype == ref["logits"].dtype == np.float32
    assert np.array_equal(single, ref["logits"])  # one uploaded image (Diagnosis page, CLI predict)
    assert np.array_equal(batch, ref["logits_batch"])  # a split at once (evaluate, the model card)


def test_prediction_applies_the_preprocessing_record(tmp_path, monkeypatch):
    """Changing the record's mean changes the prediction: the record is applied, not a module constant."""
    from cxrdemo.diagnosis import predict

    folder = tmp_path / "shifted"
    folder.mkdir()
    shutil.copy(DEMO_MODEL, folder / "model.pt")
    raw = torch.load(folder / "model.pt", weights_only=True)
    raw["preprocessing"]["mean"] = [0.0, 0.0, 0.0]
    torch.save(raw, folder / "model.pt")
    x = predict.prepare(predict.load_model("demo"), predict.read_radiograph(str(IMAGE)).grey)
    normal = predict.predict_probs(predict.load_model("demo"), x[None])
    shifted = predict.predict_probs(predict.load_model(str(folder), allow_path=True), x[None])
    assert abs(normal[0, 0] - shifted[0, 0]) > 0.1  # 0.9999 -> 0.72 on this image


@pytest.mark.slow
@pytest.mark.parametrize("module, forbidden", [
    ("cxrdemo.diagnosis.predict", "cxrdemo.model.train"),  # prediction never loads the training module
    ("cxrdemo.diagnosis.explain", "cxrdemo.model.train"),
    ("cxrdemo.model.train", "cxrdemo.runs"),  # training knows no run store
    ("cxrdemo.model.checkpoint", "cxrdemo.runs"),
])
def test_import_boundaries_of_the_model_file(module, forbidden):
    import subprocess
    import sys

    code = (f"import sys, {module}; bad = [m for m in sys.modules if m == {forbidden!r} or "
            f"m.startswith({forbidden!r} + '.')]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
