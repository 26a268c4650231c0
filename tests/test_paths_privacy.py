"""File paths can carry patient names (issue 17): runs store image paths relative to the dataset root, the root
once (config.json's `data`, where the worker needs it), and the cache and model file no absolute path at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrdemo import data
from cxrdemo.config import TrainConfig
from cxrdemo.runs import store as runs
from cxrdemo.runs.worker import execute_run
from tests.helpers import make_split_dataset

HOME = "Dr_SMITH_home"  # a folder above the dataset: must not reach anything a run or the cache writes
KEPT = "DOE^JANE_MRN-4455667_2.png"  # a good image: named by nobody
DECODE_BAD = "DOE^JOHN_MRN-1112223_1.png"  # PNG magic, broken body: skipped while decoding, reported relative
SCAN_BAD = "ROE^RICHARD_MRN-999_1.png"  # not an image at all: skipped by the scan, reported relative
ROOT = Path(__file__).resolve().parents[1]


def _dataset(tmp_path: Path) -> Path:
    ds = make_split_dataset(tmp_path / HOME / "chest", (5, 2, 2), 40)
    Image.fromarray(np.full((40, 40), 200, np.uint8)).save(ds / "train" / "PNEUMONIA" / KEPT)
    (ds / "train" / "NORMAL" / DECODE_BAD).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    (ds / "train" / "NORMAL" / SCAN_BAD).write_text("name,mrn\nROE^RICHARD,999\n")
    return ds


def test_scan_reports_skipped_files_relative_to_the_root(tmp_path):
    ds = _dataset(tmp_path)
    scan = data.scan_dataset(ds)
    summary = scan.summary()
    assert "root" not in summary and summary["name"] == "chest"
    assert [p for p, _ in summary["skipped"]] == [f"train/NORMAL/{SCAN_BAD}"]
    assert HOME not in json.dumps(summary) and HOME not in json.dumps(scan.skipped_report())
    assert data.scan.dataset_name("demo") == data.scan.dataset_name(str(data.scan.DEMO_DATA_DIR)) == "demo"


@pytest.mark.slow
def test_a_run_stores_the_root_once_and_image_paths_relative(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CXRDEMO_CACHE_DIR", str(cache))
    monkeypatch.setenv("CXRDEMO_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("CXRDEMO_OFFLINE", "1")
    ds = _dataset(tmp_path)
    config = TrainConfig(data=str(ds), backbone="cnn8", img_size=32, epochs=1, batch_size=8, patience=0, threads=1)
    d = runs.create_run(config, tmp_path / "runs", scan_summary=data.scan_dataset(ds).summary())
    assert execute_run(d, runs_dir=tmp_path / "runs")["state"] == "completed"

    meta = runs.read_json(d / "config.json")
    assert meta["config"]["data"] == str(ds)  # the root, once: the worker needs it
    assert [s["path"] for s in meta["decode_skipped"]] == [f"train/NORMAL/{DECODE_BAD}"]
    assert [p for p, _ in meta["dataset"]["skipped"]] == [f"train/NORMAL/{SCAN_BAD}"]
    text = (d / "config.json").read_text()
    assert text.count(HOME) == 1 and KEPT not in text
    for f in d.rglob("*"):  # model.pt (its config), log, status, metrics, test metrics...
        if f.is_file() and f.name != "config.json":
            raw = f.read_bytes()
            assert HOME.encode() not in raw and b"DOE^" not in raw and b"ROE^" not in raw, f.name
    from cxrdemo.model import checkpoint
    assert checkpoint.load(d / checkpoint.MODEL_FILE).config["data"] == "chest"
    files = [f for f in cache.rglob("*") if f.is_file()]
    assert files and not any(HOME.encode() in f.read_bytes() for f in files)  # relative names only
    # The cache still finds its images when the dataset moves (relative names, key from the new paths).
    moved = shutil.move(str(tmp_path / HOME), str(tmp_path / "elsewhere"))
    cached = data.load_images(data.scan_dataset(Path(moved) / "chest").splits["train"], 32)
    assert all(Path(p).is_file() for p in cached.paths) and len(cached.skipped) == 1


def test_the_shipped_demo_model_stores_no_path_of_its_build_machine():
    demo = ROOT / "weights" / "demo"
    for f in demo.iterdir():
        raw = f.read_bytes()
        assert b"/work/" not in raw and b"shared/data" not in raw and b"/home/" not in raw, f.name
    assert json.loads((demo / "config.json").read_text())["config"]["data"] == "cxr-large"
