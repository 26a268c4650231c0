"""predict.py uploads and the `predict` CLI: DICOM in memory, bad files as sentences, identifiers never out."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrdemo import paths
from cxrdemo.cli import main as cli
from cxrdemo.diagnosis import predict, result
from cxrdemo.errors import ImageReadError
from cxrdemo.model.checkpoint import Decision, Preprocessing
from cxrdemo.views import diagnosis as diagnosis_view

SECRETS = ("Doe", "Jane", "PID-0042-SECRET", "St Elsewhere", "ACC998877", "19700101", "Dr^House")


def _dicom(img_u8: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 16, slope: float | None = None,
           intercept: float | None = None, window: tuple[float, float] | None = None) -> bytes:
    """A CR DICOM file in memory with identifiers in every usual place; pixels from an 8-bit image."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-0042-SECRET", "19700101"
    ds.InstitutionName, ds.AccessionNumber, ds.ReferringPhysicianName = "St Elsewhere", "ACC998877", "Dr^House"
    ds.Modality = "CR"
    peak = (1 << bits) - 1
    stored = img_u8.astype(np.float64) / 255.0 * peak
    if photometric == "MONOCHROME1":
        stored = peak - stored  # bright bone is stored dark: the reader must invert it
    ds.Rows, ds.Columns = img_u8.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.round(stored).astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def huge_png() -> bytes:
    """A 60000 x 60000 PNG header with a few bytes of data: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def bad_uploads(make_patch_image) -> list[tuple[str, bytes, str]]:
    """(file name, bytes, words the message must contain) for every kind of bad upload."""
    good = _png(make_patch_image(np.random.default_rng(0), True)[0])
    return [
        ("empty.png", b"", "empty"),
        ("cut.png", good[: len(good) // 2], "truncated"),
        ("notes.png", b"Chest X-ray report\nNo focal consolidation.\nImpression: normal.\n" * 3, "text file"),
        ("report.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n" + bytes(range(256)), "PDF"),
        ("bomb.png", huge_png(), "too large"),
    ]


BAD_CASES = ["empty", "truncated PNG", "text renamed .png", "PDF", "huge dimensions"]


@pytest.mark.parametrize("case", range(len(BAD_CASES)), ids=BAD_CASES)
def test_every_bad_upload_is_one_clear_sentence(make_patch_image, case):
    name, raw, words = bad_uploads(make_patch_image)[case]
    with pytest.raises(ImageReadError, match=words) as err:
        predict.read_radiograph(raw, name)
    msg = str(err.value)
    assert msg.endswith(".") and "Traceback" not in msg and "\n" not in msg


@pytest.mark.parametrize("photometric,bits", [("MONOCHROME2", 16), ("MONOCHROME1", 16), ("MONOCHROME2", 12),
                                              ("MONOCHROME1", 8)])
def test_dicom_uploads_reach_a_prediction_and_never_leak_identifiers(patch_model, make_patch_image, photometric, bits):
    img, _ = make_patch_image(np.random.default_rng(11), True)
    rad = predict.read_radiograph(_dicom(img, photometric, bits), "upload.dcm")
    assert rad.meta.format == "dicom" and rad.meta.mode == photometric and rad.meta.bits == bits
    # MONOCHROME1 is displayed inverted: the patch must come back bright whatever the storage
    assert np.corrcoef(rad.grey.ravel(), img.astype(float).ravel())[0, 1] > 0.99
    res = result.assess(patch_model, rad)
    ref = result.assess_image(patch_model, torch.from_numpy(img)[None])
    assert res.predicted == ref.predicted == 1
    np.testing.assert_allclose(res.probs, ref.probs, atol=0.02)
    shown = " ".join(map(repr, (rad, rad.meta, res))) + " ".join(rad.meta.notes) + str(rad.warning)
    for secret in SECRETS:
        assert secret not in shown


def test_dicom_rescale_and_window_are_applied(patch_model, make_patch_image):
    img, _ = make_patch_image(np.random.default_rng(12), True)
    plain = predict.read_radiograph(_dicom(img, bits=12), "a.dcm")
    rescaled = predict.read_radiograph(_dicom(img, bits=12, slope=2.0, intercept=-1024.0, window=(3071.0, 8190.0)),
                                       "b.dcm")
    assert "rescale slope/intercept applied" in rescaled.meta.notes
    assert any(n.startswith("window") for n in rescaled.meta.notes)
    np.testing.assert_allclose(rescaled.grey, plain.grey, atol=0.02)  # a linear map and a wide window change nothing


def test_bytes_and_path_read_the_same(tmp_path, make_patch_image):
    raw = _png(make_patch_image(np.random.default_rng(13), True)[0])
    f = tmp_path / "x.png"
    f.write_bytes(raw)
    a, b = predict.read_radiograph(raw, "x.png"), predict.read_radiograph(f)
    np.testing.assert_array_equal(a.grey, b.grey)
    assert a.digest == b.digest == predict.digest(raw) and len(a.digest) == 64


def test_a_real_radiograph_passes_the_check_and_a_pattern_does_not(make_patch_image):
    examples = predict.example_images()
    assert len(examples) == 4 and {lb.split()[0] for lb in examples} == {"NORMAL", "PNEUMONIA"}
    real = predict.read_radiograph(next(iter(examples.values())).read_bytes(), "x.jpg")
    assert real.looks_like_cxr and real.warning is None
    fake = predict.read_radiograph(_png(_checkerboard()), "x.png")
    assert not fake.looks_like_cxr and "chest" in fake.warning


def test_model_summary_has_recipe_and_test_metrics(patch_store):
    model = predict.load_model(patch_store.run.name)
    s = predict.model_summary(model)
    assert s["recipe"]["backbone"] == "cnn8" and s["recipe"]["img_size"] == 64 and s["recipe"]["freeze"] == "head"
    assert s["test"]["n"] == 20 and 0.9 <= s["test"]["accuracy"] <= 1.0
    assert s["classes"] == ["blank", "patch"] and s["threshold"] is None
    assert predict.model_mtime(patch_store.run.name) == (patch_store.run / "model.pt").stat().st_mtime_ns
    assert predict.model_mtime("no-such-run") == 0


# ---------------------------------------------------------------- CLI

def _cli(args, capsys) -> tuple[int, list[dict], str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, [json.loads(line) for line in out.out.splitlines() if line.strip()], out.err


def _checkerboard() -> np.ndarray:
    return np.kron((np.indices((8, 8)).sum(0) % 2) * 255, np.ones((32, 32))).astype(np.uint8)


@pytest.mark.slow
def test_cli_predict_json_cam_files_and_exit_2_for_a_bad_file(patch_store, make_patch_image, tmp_path, capsys):
    rng = np.random.default_rng(14)
    a, b, c = tmp_path / "a.png", tmp_path / "b.dcm", tmp_path / "c.png"
    a.write_bytes(_png(make_patch_image(rng, True)[0]))
    b.write_bytes(_dicom(make_patch_image(rng, False)[0]))
    c.write_bytes(_png(_checkerboard()))
    bad = tmp_path / "bad.png"
    bad.write_text("not an image at all, just a note\n")
    real = predict.example_images()["NORMAL example 1"]
    out = tmp_path / "cam.png"
    code, lines, _ = _cli(["predict", "--run", patch_store.run.name, str(a), str(bad), str(b), str(real), str(c),
                           "--cam", str(out)], capsys)
    assert code == 2 and len(lines) == 5
    assert lines[1] == {"image": str(bad), "error": "This file is not an image (it looks like a text file)."}
    good = [lines[0], lines[2], lines[3], lines[4]]
    for line in good:
        assert set(line) >= {"image", "class", "probabilities", "looks_like_cxr", "warning"}
        assert set(line["probabilities"]) == {"blank", "patch"}
        assert abs(sum(line["probabilities"].values()) - 1) < 1e-4
        assert isinstance(line["looks_like_cxr"], bool) and (line["warning"] is None) == line["looks_like_cxr"]
    assert lines[0]["class"] == "patch" and lines[2]["class"] == "blank"
    assert lines[3]["looks_like_cxr"] is True and lines[4]["looks_like_cxr"] is False
    assert "chest" in lines[4]["warning"]
    cams = sorted(p.name for p in tmp_path.glob("cam-*.png"))
    assert cams == ["cam-1-a.png", "cam-3-b.png", "cam-4-IM-0199-0001.png", "cam-5-c.png"]
    assert Image.open(tmp_path / "cam-4-IM-0199-0001.png").size == Image.open(real).size  # original resolution
    assert Image.open(tmp_path / "cam-5-c.png").size == (256, 256)
    assert Image.open(tmp_path / "cam-1-a.png").mode == "RGB"
    text = json.dumps(lines)
    for secret in SECRETS:
        assert secret not in text


def test_cli_predict_one_image_writes_the_cam_file_as_named(patch_store, make_patch_image, tmp_path, capsys):
    a = tmp_path / "a.png"
    a.write_bytes(_png(make_patch_image(np.random.default_rng(15), True)[0]))
    out = tmp_path / "heat.png"
    code, lines, _ = _cli(["predict", "--run", patch_store.run.name, str(a), "--cam", str(out),
                           "--method", "GradCAM++"], capsys)
    assert code == 0 and lines[0]["cam"] == str(out) and lines[0]["method"] == "GradCAM++"
    assert Image.open(out).size == (64, 64)
    code, lines, _ = _cli(["predict", "--run", patch_store.run.name, str(a)], capsys)  # no --cam: no file
    assert code == 0 and "cam" not in lines[0] and sorted(p.name for p in tmp_path.glob("*.png")) == ["a.png", "heat.png"]


@pytest.mark.parametrize("extra,words", [(["--method", "Magic"], "Unknown heatmap method"),
                                         (["--opacity", "2"], "opacity"),
                                         (["--cam", "/nonexistent-dir/x.png"], "Could not write")])
def test_cli_predict_bad_arguments_exit_2_with_a_sentence(patch_store, make_patch_image, tmp_path, capsys, extra, words):
    a = tmp_path / "a.png"
    a.write_bytes(_png(make_patch_image(np.random.default_rng(16), True)[0]))
    code, _, err = _cli(["predict", "--run", patch_store.run.name, str(a), *extra], capsys)
    assert code == 2 and words in err and "Traceback" not in err


def test_examples_come_from_the_demo_test_split():
    ex = predict.example_images(per_class=1)
    assert list(ex) == ["NORMAL example 1", "PNEUMONIA example 1"]
    assert all(p.parent.parent == paths.EXAMPLES_DIR for p in ex.values())
    assert predict.example_images(root="/nonexistent") == {}


def test_summary_falls_back_to_the_model_card_evaluation(patch_store):
    """The demo model trains on a set without a test split: its card's first held-out evaluation is shown."""
    import json

    from cxrdemo.diagnosis import predict

    run = patch_store.run
    (run / "test_metrics.json").unlink()
    model = predict.load_model(run.name)
    assert predict.model_summary(model)["test"] == {}
    (run / "evaluation.json").write_text(json.dumps({"evaluations": [
        {"n": 74, "metrics": {"accuracy": 0.93, "auroc": 0.98}}, {"n": 241, "metrics": {"accuracy": 0.9}}]}))
    assert predict.model_summary(model)["test"] == {"accuracy": 0.93, "auroc": 0.98, "n": 74}


def _assessed(probs, predicted, threshold, pset=None, note=None, calibrated=False):
    from cxrdemo.data import ImageMeta
    from cxrdemo.diagnosis.result import ImageResult

    classes = ("NORMAL", "PNEUMONIA") if len(probs) == 2 else ("A", "B", "C")
    return ImageResult("x.png", "", classes, np.array(probs), np.zeros(len(probs)), predicted, threshold, calibrated,
                       {0.9: pset, 0.95: pset}, {} if pset is not None else {0.9: note or "no-record"}, True, None,
                       None, None, None, None, ImageMeta(64, 64, "png", "L", 8))


def test_the_decision_sentence_names_the_threshold_that_decided():
    net = torch.nn.Identity()
    pre = Preprocessing(64)
    tuned = predict.LoadedModel(net, ("NORMAL", "PNEUMONIA"), pre, Decision("val", 0.021), "r", Path("."))
    text = diagnosis_view.decision_sentence(tuned, _assessed([0.831, 0.169], 1, tuned.threshold))
    assert text.startswith("Prediction: **PNEUMONIA**") and "16.9% is at or above" in text and "2.1%" in text
    below = diagnosis_view.decision_sentence(tuned, _assessed([0.99, 0.01], 0, tuned.threshold))
    assert "**NORMAL**" in below and "1.0% is below" in below
    assert "threshold of 2.1% (the mark on the bar), tuned on validation images for balanced accuracy (" in text
    assert "not calibrated" in text  # no temperature record: the sentence says what the numbers are
    # The decision record names its rule: the config's (here contradicting) field is not consulted.
    fixed = predict.LoadedModel(net, ("NORMAL", "PNEUMONIA"), pre, Decision("spec:0.97", 0.2), "r", Path("."),
                                {"threshold": "val"})
    assert "threshold of 20.0% (the mark on the bar), that keeps 97% specificity (normals called normal) on " \
        "validation images" in diagnosis_view.decision_sentence(fixed, _assessed([0.7, 0.3], 1, fixed.threshold))
    plain = predict.LoadedModel(net, ("A", "B", "C"), pre, Decision(), "r", Path("."))
    assert diagnosis_view.decision_sentence(plain, _assessed([0.2, 0.5, 0.3], 1, None)) == \
        "Prediction: **B** (50.0%, the most probable class; probabilities not calibrated: scores, not risks)"


def test_a_calibrated_model_reads_its_verdict_off_the_calibrated_bar():
    from cxrdemo.model import trust

    net = torch.nn.Identity()
    cal = predict.LoadedModel(net, ("NORMAL", "PNEUMONIA"), Preprocessing(64), Decision("spec:0.95", 0.0875), "r",
                              Path("."), trust=trust.Trust(temperature=1.752))
    assert cal.threshold == pytest.approx(0.2079, abs=1e-4)  # docs/trust_measurements.md
    text = diagnosis_view.decision_sentence(cal, _assessed([0.696, 0.304], 1, cal.threshold, calibrated=True))
    assert "30.4% is at or above this model's decision threshold of 20.8%" in text and "calibrated)" in text
    one = diagnosis_view.set_sentence(_assessed([0.696, 0.304], 1, cal.threshold, (1,)), 0.9)
    both = diagnosis_view.set_sentence(_assessed([0.696, 0.304], 1, cal.threshold, (0, 1)), 0.9)
    assert "**{PNEUMONIA}**" in one and "**both** — the model cannot tell at this confidence" in both
    short = _assessed([0.696, 0.304], 1, cal.threshold, None, "Too few validation images for a 95% prediction set")
    assert diagnosis_view.set_sentence(short, 0.9).startswith("Too few validation images")


def test_headlines_lead_with_the_most_shifted_set(patch_store):
    run = patch_store.run
    (run / "evaluation.json").write_text(json.dumps({"evaluations": [
        {"data": "x/cxr-dev", "split": "test", "label": "in-distribution", "n": 74,
         "metrics": {"accuracy": 0.959}, "ci95": {"accuracy": [0.905, 1.0]}},
        {"data": "x/cxr-shift", "split": "test", "label": "shifted", "n": 241,
         "metrics": {"specificity": 0.845}, "ci95": {"specificity": [0.765, 0.917]}}]}))
    first, second = predict.headlines(run)
    assert (first["set"], second["set"]) == ("cxr-shift/test", "cxr-dev/test")
    assert diagnosis_view.headline_value(first, "specificity") == "84.5% (76.5–91.7%)"
    assert "a shifted set" in diagnosis_view.headline_sentence(first)
    assert "drawn like the training images" in diagnosis_view.headline_sentence(second)
    (run / "evaluation.json").unlink()  # a user's run: its own test split, in-distribution
    (own,) = predict.headlines(run, {"n": 20, "accuracy": 0.9})
    assert own["label"] == "in-distribution" and own["metrics"] == {"accuracy": 0.9}


def test_demo_model_eval_flag_carries_a_label():
    from cxrdemo.cli.demo_model import parse_eval
    from cxrdemo.errors import ConfigError

    assert parse_eval("../d/cxr-shift:test:shifted") == ("../d/cxr-shift", "test", "shifted")
    assert parse_eval("../d/cxr-dev") == ("../d/cxr-dev", "test", "in-distribution")
    with pytest.raises(ConfigError, match="must be in-distribution or shifted"):
        parse_eval("d:test:odd")
