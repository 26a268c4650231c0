"""A classroom's allowed folders hold below the top folder (issue 30 audit): split, class and nested folders and files
that are links out of the roots are neither followed nor read; the skipped table names the link, never its target."""

from __future__ import annotations

import json
import os

import pytest

from cxrdemo.config import TrainConfig
from cxrdemo.data import scan as scan_module
from cxrdemo.data.scan import scan_dataset
from cxrdemo.model import train
from cxrdemo.runs import jobs, policy
from cxrdemo.views import classroom as cls
from tests.helpers import make_layout_dataset


@pytest.fixture
def fenced(tmp_path):
    """allowed/ds: NORMAL and PNEUMONIA of its own, and links out to outside/ at every level."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    ds = make_layout_dataset(allowed / "ds", {"train/NORMAL": 4, "train/PNEUMONIA": 4, "val/NORMAL": 2,
                                              "val/PNEUMONIA": 2})
    make_layout_dataset(outside, {"SECRETCLASS": 3, "secret-split/NORMAL": 2, "secret-split/PNEUMONIA": 2,
                                  "secret-nested/NORMAL": 2}, name="secret-{i}.png")
    os.symlink(outside / "SECRETCLASS", ds / "train" / "OTHER")  # a class folder
    os.symlink(outside / "secret-split", ds / "test")  # a split folder
    os.symlink(outside / "secret-nested", ds / "train" / "NORMAL" / "more")  # a nested folder
    os.symlink(outside / "SECRETCLASS" / "secret-0.png", ds / "train" / "PNEUMONIA" / "x.png")  # a file
    (outside / "POPULATION.json").write_text(json.dumps({"age_years": [1, 5]}))
    os.symlink(outside / "POPULATION.json", ds / "POPULATION.json")
    return allowed, outside, ds


def test_links_out_of_the_roots_are_neither_followed_nor_read(fenced, monkeypatch):
    allowed, outside, ds = fenced
    os.unlink(ds / "test")  # a linked split refuses the whole set (below)
    opened = []
    monkeypatch.setattr(scan_module, "open", lambda p, *a, **k: opened.append(str(p)) or open(p, *a, **k),
                        raising=False)
    scan = scan_dataset(ds, roots=[allowed])
    images = [p for items in scan.splits.values() for p, _ in items]
    assert scan.classes == ("NORMAL", "PNEUMONIA") and len(images) == 12 and scan.population is None
    assert not any(str(outside) in os.path.realpath(p) for p in images + opened)
    shown = json.dumps([scan.summary(), scan.skipped_report(), scan.report()])
    assert "secret" not in shown.lower() and str(outside) not in shown
    links = {p for p, r in scan.skipped_report() if "outside the allowed folders" in r}
    assert links == {"POPULATION.json", "train/OTHER", "train/NORMAL/more", "train/PNEUMONIA/x.png"}


def test_a_desktop_scan_still_follows_links(fenced):
    _, _, ds = fenced
    os.unlink(ds / "train" / "OTHER")
    scan = scan_dataset(ds)
    assert len(scan.splits["test"]) == 4 and scan.population is not None  # the linked split and POPULATION.json
    assert any(p.endswith("x.png") for items in scan.splits.values() for p, _ in items)  # the linked file


def test_the_page_and_the_worker_scan_inside_the_roots(fenced, run_store, monkeypatch):
    allowed, outside, ds = fenced
    os.unlink(ds / "test")
    room = cls.Classroom(on=True, roots=(allowed,))
    assert room.scan_roots(str(ds)) == (allowed,) and room.scan_roots("demo") is None
    assert cls.Classroom().scan_roots(str(ds)) is None  # desktop: unchanged
    monkeypatch.setattr(jobs, "launch", lambda *a, **k: None)
    asker = policy.Asker(classroom=True, teacher=True, browser="b", roots=(allowed,))
    (run,) = jobs.submit_all([(TrainConfig(data=str(ds), epochs=1), "x")], run_store, asker=asker)
    recorded = json.loads((run_store / run / "config.json").read_text())
    assert recorded["data_roots"] == [str(allowed)]
    seen = {}
    monkeypatch.setattr(train.data, "scan_dataset", lambda *a, **k: seen.update(k) or scan_dataset(*a, **k))
    scan, _ = train._read_dataset(TrainConfig(data=str(ds)), train.preprocessing_for(TrainConfig(img_size=32)),
                                  lambda p: None, roots=recorded["data_roots"])
    assert seen["roots"] == [str(allowed)] and "OTHER" not in scan.classes
