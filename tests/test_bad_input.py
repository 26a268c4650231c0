"""Hardening (issue #8), bad input: every mistake a user can make is one sentence, exit code 2, nothing half-written.

The reader cases themselves live in tests/test_imageio.py (formats, bombs, DICOM), the scanner cases in
tests/test_data.py and the option checks in tests/test_config.py; here is the end-to-end view of the same
inputs through the command line (in-process `cli.main`) and the Diagnosis page (AppTest), plus the
run-id boundary: nothing outside the runs directory is ever read as a run id or written.
"""

from __future__ import annotations

import io
import json
import math
import os
import resource
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from cxrdemo import data
from cxrdemo.cli import main as cli
from cxrdemo.config import TrainConfig
from cxrdemo.data import imageio
from cxrdemo.errors import ConfigError, RunError
from cxrdemo.runs import store as runs
from tests.helpers import make_layout_dataset as make_ds
from tests.test_imageio import (
    compressed_dicom,
    encode,
    make_dicom,
    png_with_header,
    ramp,
)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- helpers

def radiograph_like(size: int = 96, seed: int = 0) -> np.ndarray:
    """A grey image with two dark 'lungs' on a bright body: enough structure to be read as a radiograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    img = 0.75 - 0.45 * (np.exp(-((x - 0.3) ** 2 / 0.02 + (y - 0.5) ** 2 / 0.08))
                         + np.exp(-((x - 0.7) ** 2 / 0.02 + (y - 0.5) ** 2 / 0.08)))
    img += 0.04 * rng.standard_normal((size, size))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime: 'nothing was written' is this staying equal."""
    out = {}
    for p in sorted(root.rglob("*")) if root.exists() else []:
        st_ = p.lstat()
        out[str(p.relative_to(root))] = (st_.st_size if p.is_file() else -1, st_.st_mtime_ns)
    return out


def one_error_line(err: str) -> str:
    """stderr of a refused command: exactly one line, a sentence, no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("error: ")
    return lines[0]


SPLIT = {"train/A": 5, "train/B": 5, "val/A": 2, "val/B": 2, "test/A": 2, "test/B": 2}
TRAIN = ["--backbone", "cnn8", "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--patience", "0", "--quiet"]


@pytest.fixture
def store_home(tmp_path):
    """conftest's store lives in tmp_path/box: datasets and a sentinel folder outside it must stay untouched."""
    return tmp_path / "box"


@pytest.fixture
def box(store, cold_image_memo):
    """The private run store (tmp_path/box/runs), with no decoded image left over from another test."""
    return store


# ---------------------------------------------------------------- uploads through `predict`



def _no_pixels_dicom() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(ramp(8, 8, np.uint16))))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _jpeg_lossless_decoder() -> bool:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    return get_decoder(JPEGLosslessSV1).is_available


GOOD = encode(radiograph_like(), "PNG")
REFUSED = {  # file name -> (bytes, words the sentence must contain)
    "empty.png": (b"", "empty"),
    "truncated.png": (GOOD[: len(GOOD) // 3], "truncated"),
    "truncated.jpg": (encode(radiograph_like(), "JPEG")[:300], "truncated"),
    "notes.png": (b"Patient notes: nothing to see here.\n" * 4, "text file"),
    "scan.pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "PDF"),
    "bomb.png": (png_with_header(20_000, 20_000), "too large"),
    "report.dcm": (_no_pixels_dicom(), "no pixel data"),
    "compressed.dcm": (compressed_dicom(), "no decoder"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_predict_refuses_bad_uploads_with_a_sentence_and_exit_2(patch_store, tmp_path, capsys, name):
    content, words = REFUSED[name]
    if name == "compressed.dcm" and _jpeg_lossless_decoder():
        pytest.skip("a JPEG Lossless decoder is installed here: the file is then decoded (and found damaged)")
    f = tmp_path / name
    f.write_bytes(content)
    before = tree_snapshot(patch_store.root)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert cli.main(["predict", "--run", patch_store.run.name, str(f)]) == 2
    out, err = capsys.readouterr()
    (line,) = [json.loads(ln) for ln in out.splitlines()]
    assert set(line) == {"image", "error"} and words.lower() in line["error"].lower(), line
    assert line["error"].endswith(".") and "Traceback" not in err and not err.strip()
    assert tree_snapshot(patch_store.root) == before  # nothing written in the run store
    if name == "bomb.png":  # refused from the header: no 400-megapixel buffer was ever allocated
        t0 = time.perf_counter()
        with pytest.raises(imageio.ImageReadError):
            imageio.read_image(f)
        assert time.perf_counter() - t0 < 0.5
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 100_000  # KiB


def _rgba() -> bytes:
    a = radiograph_like()
    return encode(Image.fromarray(np.dstack([a, a, a, np.full_like(a, 255)]), "RGBA"))


def _exif_rotated() -> bytes:
    im = Image.fromarray(radiograph_like()[:, :60])  # 60 wide x 96 high, stored on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return encode(im, "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [Image.fromarray(radiograph_like(seed=s)) for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


ACCEPTED = {  # name -> (bytes, words expected among the reader's notes or warning, or None)
    "rgba.png": (_rgba(), None),
    "palette.png": (encode(Image.fromarray(radiograph_like()).convert("P")), None),
    "16bit.png": (encode(Image.fromarray(radiograph_like().astype(np.uint16) * 257)), None),
    "cmyk.jpg": (encode(Image.fromarray(radiograph_like()).convert("CMYK"), "JPEG"), None),
    "rotated.jpg": (_exif_rotated(), None),
    "animated.gif": (_animated_gif(), None),
    "one-pixel.png": (encode(np.full((1, 1), 128, np.uint8)), "very small"),
    "mono1.dcm": (make_dicom(radiograph_like().astype(np.uint16) * 16, photometric="MONOCHROME1", bits=12), None),
    "frames.dcm": (make_dicom(np.stack([radiograph_like(seed=s).astype(np.uint16) for s in range(3)]), bits=8), None),
}


def test_predict_reads_every_supported_variant_and_flags_what_is_not_a_radiograph(patch_store, tmp_path, capsys):
    files = []
    for name, (content, _) in ACCEPTED.items():
        (tmp_path / name).write_bytes(content)
        files.append(str(tmp_path / name))
    (tmp_path / "notes.png").write_text("not an image")
    files.insert(3, str(tmp_path / "notes.png"))
    assert cli.main(["predict", "--run", patch_store.run.name, *files]) == 2  # one bad file: exit 2 at the end
    out, err = capsys.readouterr()
    lines = {Path(d["image"]).name: d for d in map(json.loads, out.splitlines())}
    assert list(lines) == [Path(f).name for f in files]  # one line per file, in order: the bad one did not stop it
    assert "text file" in lines.pop("notes.png")["error"] and not err.strip()
    for name, line in lines.items():
        assert line["class"] in ("blank", "patch"), (name, line)
        assert math.isclose(sum(line["probabilities"].values()), 1.0, abs_tol=1e-4)
        words = ACCEPTED[name][1]
        if words:
            assert not line["looks_like_cxr"] and words in line["warning"]


def test_exif_rotation_and_monochrome1_are_read_the_right_way_up():
    grey, meta = imageio.read_image(_exif_rotated())
    assert grey.shape == (60, 96) and "EXIF rotation applied" in meta.notes  # displayed 96 wide, 60 high
    grey1, meta1 = imageio.read_image(ACCEPTED["mono1.dcm"][0], "mono1.dcm")
    plain = imageio.read_image(GOOD)[0]
    assert meta1.mode == "MONOCHROME1"
    assert np.corrcoef(grey1.ravel(), plain.ravel())[0, 1] < -0.9  # inverted: bright bone stays bright


def test_predict_bad_arguments_are_sentences(patch_store, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(GOOD)
    for argv, words in (
        (["predict", "--run", "no-such-run", str(tmp_path / "x.png")], "No run 'no-such-run'"),
        (["predict", "--run", patch_store.run.name, str(tmp_path / "missing.png")], None),
        (["predict", "--run", patch_store.run.name, "--method", "MagicCAM", str(tmp_path / "x.png")], "MagicCAM"),
        (["predict", "--run", patch_store.run.name, "--opacity", "3", str(tmp_path / "x.png")], "opacity"),
    ):
        assert cli.main(argv) == 2, argv
        out, err = capsys.readouterr()
        if words is None:  # a missing image is a per-file error line, like an unreadable one
            assert "could not be found" in json.loads(out)["error"]
        else:
            assert words in one_error_line(err)


# ---------------------------------------------------------------- uploads through the Diagnosis page

def test_diagnosis_page_survives_bad_uploads_then_diagnoses_a_good_one(patch_store):
    at = AppTest.from_file(str(REPO / "app_pages" / "diagnosis.py"), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    for name in ("empty.png", "notes.png", "scan.pdf", "bomb.png", "report.dcm", "truncated.jpg"):
        content, words = REFUSED[name]
        at.file_uploader[0].set_value((name, content, "application/octet-stream"))  # a fresh tree after each run
        at.run()
        assert not at.exception, (name, [e.value for e in at.exception])
        errors = " ".join(e.value for e in at.error)
        assert words.lower() in errors.lower() and "Traceback" not in errors, (name, errors)
    at.file_uploader[0].set_value(("good.png", GOOD, "image/png"))
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Prediction:" in m.value for m in at.markdown)  # the app kept running and answered


def test_upload_cap_and_localhost_binding_are_configured():
    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] in ("localhost", "127.0.0.1")  # not reachable from the network by default
    assert 10 <= cfg["server"]["maxUploadSize"] <= 200  # MB: a 16-bit DICOM fits, a video does not
    assert cfg["client"]["showErrorDetails"] == "none"  # never a traceback in the browser
    assert cfg["browser"]["gatherUsageStats"] is False
    readme = (REPO / "README.md").read_text()
    assert "--server.address 0.0.0.0" in readme  # the classroom switch is documented


# ---------------------------------------------------------------- datasets through `scan` and `train`

DATASETS = {  # name -> (builder, words of the sentence)
    "missing folder": (lambda r: r / "nowhere", "does not exist"),
    "a file, not a folder": (lambda r: (r.mkdir(), (r / "x.png").write_bytes(GOOD), r / "x.png")[-1],
                             "is a file, not a folder"),
    "no class folders": (lambda r: (r.mkdir(), r)[-1], "no class folders"),
    "one class": (lambda r: make_ds(r, {"A": 4}), "only one class folder"),
    "empty class": (lambda r: make_ds(r, {"train/A": 3, "train/B": 0, "val/A": 1, "val/B": 1}), "contains no readable"),
    "empty train split": (lambda r: make_ds(r, {"train/A": 0, "train/B": 0, "val/A": 2, "val/B": 2}), "no readable"),
    "classes differ": (lambda r: make_ds(r, {"train/A": 2, "train/B": 2, "val/A": 1, "val/C": 1}),
                       "differ between splits"),
    "only junk": (lambda r: (make_ds(r, {"A": 0, "B": 0}), (r / "A" / "Thumbs.db").write_bytes(b"\0" * 9),
                             (r / "B" / ".hidden.png").write_bytes(GOOD), r)[-1], "no readable images"),
}


@pytest.mark.parametrize("case", sorted(DATASETS))
def test_unusable_dataset_is_one_line_and_exit_2_for_scan_and_train(box, tmp_path, capsys, case):
    build, words = DATASETS[case]
    root = build(tmp_path / "ds")
    assert cli.main(["scan", str(root)]) == 2
    assert words in one_error_line(capsys.readouterr().err)
    assert cli.main(["train", "--data", str(root), *TRAIN]) == 2
    out, err = capsys.readouterr()
    assert words in one_error_line(err)
    (run_id,) = out.split()  # the run id, then nothing: the run is recorded as failed with the same sentence
    status = runs.read_status(box / run_id)
    assert status["state"] == "failed" and words in status["error"]
    assert not (box / run_id / "model.pt").exists()


def test_empty_val_split_is_a_sentence(box, tmp_path, capsys):
    root = make_ds(tmp_path / "ds", {"train/A": 3, "train/B": 3, "val/A": 0, "val/B": 0})
    assert cli.main(["scan", str(root)]) == 0  # the scan itself is fine: it reports 0 val images
    capsys.readouterr()
    assert cli.main(["train", "--data", str(root), *TRAIN]) == 2
    assert "no validation images" in one_error_line(capsys.readouterr().err)


def test_messy_but_usable_dataset_trains_and_reports_what_it_skipped(box, tmp_path, capsys, monkeypatch):
    # A class with one image, hidden files, Thumbs.db, an unreadable file and a symlink loop, all at once.
    root = make_ds(tmp_path / "ds", {"train/A": 4, "train/B": 1, "val/A": 1, "val/B": 1, "test/A": 1, "test/B": 1})
    (root / "train" / "A" / "Thumbs.db").write_bytes(b"\0" * 64)
    (root / "train" / "A" / ".DS_Store").write_bytes(b"\0" * 64)
    (root / "train" / "B" / "._im000.png").write_bytes(b"\0" * 64)  # a macOS resource fork next to the image
    (root / "train" / "A" / "locked.png").write_bytes(GOOD)
    os.symlink(root / "train", root / "train" / "A" / "loop")
    real_open = open

    def guarded_open(path, *a, **kw):  # tests run as root, who can read a chmod-000 file: refuse it here
        if os.fspath(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *a, **kw)
    monkeypatch.setattr(data.scan, "open", guarded_open, raising=False)  # module globals shadow the builtin
    monkeypatch.setattr(imageio, "open", guarded_open, raising=False)

    assert cli.main(["scan", "--json", str(root)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["train"] == {"A": 4, "B": 1}
    reasons = {Path(p).name: r for p, r in summary["skipped"]}
    assert reasons["Thumbs.db"] == "system file" and reasons[".DS_Store"] == "hidden file"
    assert "Permission denied" in reasons["locked.png"]
    assert "outside its class folder" in reasons["loop"]  # not followed: B's image is not filed under A
    assert cli.main(["train", "--data", str(root), *TRAIN]) == 0
    run_id = capsys.readouterr().out.split()[0]
    assert runs.read_status(box / run_id)["state"] == "completed"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod-000 files; simulated in the test above")
def test_chmod_000_file_is_skipped_and_reported(tmp_path):
    root = make_ds(tmp_path / "ds", {"A": 3, "B": 3})
    locked = root / "A" / "im000.png"
    locked.chmod(0)
    scan = data.scan_dataset(root)
    assert any(p == str(locked) and "Permission denied" in r for p, r in scan.skipped)


def test_ten_thousand_tiny_files_scan_from_the_cli(tmp_path, capsys):
    png = encode(np.arange(64, dtype=np.uint8).reshape(8, 8))
    for cls in ("A", "B"):
        (tmp_path / "big" / cls).mkdir(parents=True)
        for i in range(5000):
            (tmp_path / "big" / cls / f"{i:05d}.png").write_bytes(png)
    t0 = time.perf_counter()
    assert cli.main(["scan", "--json", str(tmp_path / "big")]) == 0
    elapsed = time.perf_counter() - t0
    summary = json.loads(capsys.readouterr().out)
    assert summary["totals"]["all"] == 10_000 and summary["n_skipped"] == 0
    assert elapsed < 8, f"{elapsed:.1f} s"


# ---------------------------------------------------------------- options

@pytest.mark.parametrize("flags, words", [
    (["--epochs", "0"], "Epochs must be at least 1"),
    (["--epochs", "-3"], "Epochs must be at least 1"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--lr", "-0.1"], "Learning rate"),
    (["--img-size", "31"], "between 32 and 1024"),
    (["--batch-size", "0"], "Batch size"),
    (["--init", "run:"], "Initialisation"),
])
def test_bad_options_are_refused_before_any_run_is_made(box, capsys, flags, words):
    assert cli.main(["train", "--data", "demo", *flags]) == 2
    out, err = capsys.readouterr()
    assert words in one_error_line(err) and not out
    assert not box.exists() or not any(box.iterdir())  # nothing was created


@pytest.mark.parametrize("init, words", [
    ("run:no-such-run", "No run 'no-such-run'"),
    ("run:../outside", "not a valid run id"),
    ("run:/etc", "not a valid run id"),
])
def test_bad_backbone_or_starting_run_fails_the_run_with_a_sentence(box, tmp_path, capsys, init, words):
    ds = make_ds(tmp_path / "ds", SPLIT)
    assert cli.main(["train", "--data", str(ds), *TRAIN, "--init", init]) == 2
    assert words in one_error_line(capsys.readouterr().err)
    assert cli.main(["train", "--data", str(ds), *TRAIN, "--backbone", "resnet19"]) == 2
    assert "Known backbones" in one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_batch_larger_than_the_dataset_trains_on_one_smaller_batch(box, tmp_path, capsys):
    ds = make_ds(tmp_path / "ds", SPLIT)
    flags = [f for f in TRAIN if f != "--quiet"]
    assert cli.main(["train", "--data", str(ds), *flags, "--batch-size", "1000", "--epochs", "2"]) == 0
    out, err = capsys.readouterr()
    run_id = out.split()[0]
    assert runs.read_status(box / run_id)["state"] == "completed"
    assert "epoch 1/2  batch 1/1" in err and "epoch 2/2  batch 1/1" in err  # all 10 images in one batch
    assert list(runs.read_metrics(box / run_id)["epoch"]) == [1, 2]


# ---------------------------------------------------------------- run ids cannot leave the runs directory

def test_ids_with_paths_are_refused_and_nothing_outside_is_touched(box, tmp_path, capsys):
    outside = tmp_path / "outside"
    victim = make_ds(outside / "victim-data", {"A": 2, "B": 2})
    fake_run = outside / "fake-run"  # looks like a queued run, so a careless cancel would write into it
    fake_run.mkdir()
    runs.atomic_write_json(fake_run / "config.json", {"config": TrainConfig(data=str(victim)).to_dict()})
    runs.atomic_write_json(fake_run / "status.json", {"state": "queued"})
    before = tree_snapshot(outside)
    good = runs.create_run(TrainConfig(data=str(victim)), box)
    rel = os.path.relpath(fake_run, box)  # ../../outside/fake-run
    for argv in (["jobs", "cancel", rel], ["jobs", "cancel", str(fake_run)], ["jobs", "again", rel],
                 ["jobs", "watch", rel, "--timeout", "1"], ["jobs", "cancel", "../x"],
                 ["evaluate", "--run", "../../x", "--data", str(victim)],
                 ["predict", "--run", "../nowhere", str(victim / "A" / "im000.png")]):
        assert cli.main(argv) == 2, argv
        one_error_line(capsys.readouterr().err)
    for bad in (rel, str(fake_run), "..", "../x", "/etc", f"{good.name}/../../outside"):
        with pytest.raises(RunError):
            runs.delete_run(bad, box)  # the Compare page's delete takes ids only
    assert tree_snapshot(outside) == before
    assert [p.name for p in box.iterdir() if not p.name.startswith(".")] == [good.name]
    # A run FOLDER given to the CLI on purpose is read, never written.
    assert cli.main(["predict", "--run", str(fake_run), str(victim / "A" / "im000.png")]) == 2
    assert "no trained model" in one_error_line(capsys.readouterr().err)
    assert tree_snapshot(outside) == before


def test_a_run_name_with_a_path_stays_inside_the_store(box):
    d = runs.create_run(TrainConfig(), box, name="../../evil/name")
    assert d.parent == box and "/" not in d.name and ".." not in d.name
    assert not (box.parent / "evil").exists()


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(min_size=0, max_size=40))
def test_any_string_is_refused_or_names_a_folder_directly_in_the_store(tmp_path_factory, s):
    root = tmp_path_factory.getbasetemp() / "idstore"
    try:
        runs.check_run_id(s)
    except RunError:
        return
    assert (root / s).resolve().parent == root.resolve() and s not in (".", "..")


TEXT_OR_JUNK = st.one_of(st.text(max_size=8), st.integers(-5, 2000), st.floats(allow_nan=True), st.none(),
                         st.booleans(), st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(list(TrainConfig.__dataclass_fields__)), TEXT_OR_JUNK,
                       max_size=3))
def test_a_hand_edited_config_raises_only_config_error(values):
    # config.json is the unit of work ("start again", other engines): whatever is in it, one sentence.
    try:
        c = TrainConfig.from_dict(values)
    except ConfigError as exc:
        assert str(exc).endswith((".", ")"))
        return
    assert c.epochs >= 1 and 32 <= c.img_size <= 1024 and math.isfinite(c.lr)
    _ = c.gradual_epoch  # every property works on what validation let through


@pytest.mark.parametrize("name", ["data", "backbone", "init", "freeze", "optimizer", "augment", "balance", "head"])
def test_a_number_where_text_belongs_is_a_sentence(name):
    with pytest.raises(ConfigError, match=f"{name} must be text"):
        TrainConfig.from_dict({name: 5})
