"""The run store: unique safe ids, atomic files, truthful status, damaged runs reported not fatal."""

import json
import os
import subprocess
import sys
import threading

import pytest

from cxrdemo.config import TrainConfig
from cxrdemo.errors import RunError
from cxrdemo.runs import lifecycle
from cxrdemo.runs import store as runs


def test_create_run_writes_config_first_and_queued_status(store):
    d = runs.create_run(TrainConfig(backbone="cnn5", freeze="head"))
    assert d.parent == store and "-cnn5-head" in d.name
    meta = runs.read_json(d / "config.json")
    assert meta["config"]["backbone"] == "cnn5" and "versions" not in meta  # torch-free: the worker adds them
    assert runs.read_status(d)["state"] == "queued"
    runs.record_versions(d)
    meta = runs.read_json(d / "config.json")
    assert "torch" in meta["versions"] and meta["config"]["backbone"] == "cnn5"


def test_concurrent_creates_get_distinct_ids(store):
    ids = []
    threads = [threading.Thread(target=lambda: ids.append(runs.create_run(TrainConfig()).name)) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(ids)) == 8


@pytest.mark.parametrize("bad", ["../etc", "/etc/passwd", "a/b", "..", "", ".hidden", "x" * 200, "run\x00id"])
def test_unsafe_ids_are_rejected(store, bad):
    with pytest.raises(RunError):
        runs.run_dir(bad)


def test_path_is_accepted_only_when_allowed(store):
    d = runs.create_run(TrainConfig())
    assert runs.run_dir(str(d), allow_path=True) == d
    with pytest.raises(RunError):
        runs.run_dir(str(d))


def test_atomic_write_leaves_previous_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "status.json"
    runs.atomic_write_json(target, {"epoch": 1})

    def boom(*a):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        runs.atomic_write_json(target, {"epoch": 2})
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temp file left behind


def test_dead_worker_reads_interrupted(store):
    d = runs.create_run(TrainConfig())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert lifecycle.claim(d, pid=proc.pid)["state"] == "running"
    runs.write_status(d, epoch=2)
    s = runs.read_status(d)
    assert s["state"] == "interrupted" and s["epoch"] == 2 and "stopped unexpectedly" in s["error"]
    runs.write_status(d, pid=os.getpid())
    assert runs.read_status(d)["state"] == "running"


def test_damaged_run_is_listed_not_fatal(store):
    good = runs.create_run(TrainConfig())
    bad = runs.create_run(TrainConfig())
    (bad / "config.json").write_text("{not json")
    listed = {r.run_id: r for r in runs.list_runs()}
    assert listed[good.name].state == "queued"
    assert listed[bad.name].state == "damaged" and "damaged" in listed[bad.name].damaged


def test_metrics_rows_append_and_read_back(store):
    d = runs.create_run(TrainConfig())
    runs.append_metrics(d, {"epoch": 1, "train_loss": 0.5, "val_loss": 0.6, "path": "full"})
    runs.append_metrics(d, {"epoch": 2, "train_loss": 0.4, "val_loss": 0.5, "path": "full"})
    df = runs.read_metrics(d)
    assert list(df["epoch"]) == [1, 2] and df["val_loss"].iloc[-1] == 0.5 and df["path"].iloc[0] == "full"
