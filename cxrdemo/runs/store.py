"""The run store: one folder per run, every file written atomically, ids that cannot escape the store."""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cxrdemo import fileio, paths
from cxrdemo.config import TrainConfig
from cxrdemo.errors import RunError
from cxrdemo.model.files import has_model, model_path
from cxrdemo.fileio import atomic_write_json, read_json  # noqa: F401 - the store's file helpers
from cxrdemo.runs import lifecycle

# A run's state belongs to the lifecycle; these names let readers of the store ask without a second import.
from cxrdemo.runs.lifecycle import (  # noqa: F401
    ACTIVE,
    FINAL,
    HEARTBEAT_STALE_S,
    pid_alive,
    read_status,
    run_lock,
)

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "train_acc", "val_acc", "val_precision", "val_recall",
                  "val_f1", "val_micro_recall", "val_auroc", "lr", "seconds", "images_per_s", "trainable_params",
                  "frozen_groups", "path")




# ---------------------------------------------------------------- addressing runs

def store_dir(runs_dir: str | Path | None = None) -> Path:
    """The runs directory (not created here: create_run makes it when the first run is written)."""
    d = Path(runs_dir).expanduser().resolve() if runs_dir else paths.runs_dir()
    return d


def check_run_id(run_id: str) -> str:
    """Reject ids that could name anything outside the runs directory."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id) or ".." in run_id:
        raise RunError(f"{run_id!r} is not a valid run id (letters, digits, '.', '_' and '-' only).")
    return run_id


def run_dir(run: str, runs_dir: str | Path | None = None, *, allow_path: bool = False) -> Path:
    """The folder of run `run`: 'demo', an id in the store, or (CLI only) the path of a run folder."""
    if run == paths.DEMO_RUN_NAME:
        d = paths.demo_run_dir()
        if not has_model(d):
            raise RunError(f"The demo model is missing: expected {model_path(d)}.")
        return d
    if allow_path and (os.sep in run or run.startswith(".")):
        d = Path(run).expanduser().resolve()
        if not ((d / "config.json").is_file() or has_model(d)):
            raise RunError(f"{run} is not a run folder (no config.json or {model_path(d).name} in it).")
        return d
    d = store_dir(runs_dir) / check_run_id(run)
    if not d.is_dir():
        raise RunError(f"No run {run!r} in {store_dir(runs_dir)}.")
    return d


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "run"


def create_run(config: TrainConfig, runs_dir: str | Path | None = None, scan_summary: dict | None = None,
               name: str = "", browser: str = "", roots: tuple[Path, ...] = ()) -> Path:
    """Make a new run folder with a unique readable id, config.json first, then status 'queued'.

    `browser`: the hashed id of the browser that started it (classroom mode counts jobs per browser); `roots`: the
    allowed data folders of a classroom, which the worker's scan stays inside (links out are not followed).
    """
    root = store_dir(runs_dir)
    base = f"{datetime.now():%Y%m%d-%H%M%S}-{_slug(config.backbone)}-{_slug(str(config.freeze))}"
    if name:
        base += "-" + _slug(name)[:40]
    d = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            run_id = base if i == 0 else f"{base}-{i + 1}"
            try:
                (root / run_id).mkdir()  # exclusive: two tabs at the same second get two ids
                break
            except FileExistsError:
                continue
        else:
            raise RunError("Could not find a free run id; is the runs directory writable?")
        d = root / run_id
        # The library versions are added by the worker that trains it (record_versions): torch stays out of here.
        fileio.atomic_write_json(d / "config.json", {
            "run_id": run_id, "created": time.time(), "config": config.to_dict(), "dataset": scan_summary or {},
            **({"browser": browser} if browser else {}), **({"data_roots": [str(r) for r in roots]} if roots else {}),
        })
        lifecycle.create(d)
    except OSError as exc:
        # Disk full, read-only or not a folder: say so, and leave no half-made run behind.
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)
        raise RunError(f"Cannot write a new run in {root} ({exc.strerror or exc}): is the disk full or the "
                       "folder read-only?") from None
    return d


def library_versions() -> dict[str, str]:
    """Versions that matter for reproducing a run (imports torch: called by the worker, not the job side)."""
    import numpy
    import torch
    import torchvision

    from cxrdemo import __version__

    return {"cxrdemo": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__}


def record_versions(d: Path) -> None:
    """Add the versions of the libraries that train the run to its config.json (by the worker that claimed it)."""
    versions = library_versions()  # before the lock: importing torch takes seconds
    with lifecycle.run_lock(d):
        meta = fileio.read_json(Path(d) / "config.json")
        fileio.atomic_write_json(Path(d) / "config.json", {**meta, "versions": versions})


# ---------------------------------------------------------------- status fields

def write_status(d: Path, **fields: Any) -> dict:
    """Merge progress and bookkeeping fields into status.json (never the state: that is the lifecycle's)."""
    return lifecycle.update(d, **fields)


# ---------------------------------------------------------------- reading runs

@dataclass
class RunInfo:
    """What the pages and the CLI need to list a run; `damaged` is a sentence when it cannot be read."""

    run_id: str
    path: Path
    config: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    damaged: str | None = None
    example: bool = False  # a read-only example shipped with the project (runs/examples), not a run of this store

    @property
    def state(self) -> str:
        return "damaged" if self.damaged else str(self.status.get("state", "unknown"))


# Parsed config.json and status.json by run folder, kept while both files are unchanged (same inode, size and
# modification time: every writer replaces them atomically). Pages list the whole store every few seconds; with
# 2,000 finished runs, reading and parsing 4,000 files each time cost ~0.1 s of CPU per refresh and tab.
_PARSED: dict[str, tuple[tuple, dict, dict]] = {}
_PARSED_MAX = 50_000


def _file_key(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _parsed(d: Path) -> tuple[dict, dict]:
    """(config.json, status.json as written) of a run folder, parsed once per version of the two files."""
    base = os.fspath(d)
    key = (_file_key(os.path.join(base, "config.json")), _file_key(os.path.join(base, lifecycle.STATUS_FILE)))
    hit = _PARSED.get(base)
    if hit is not None and hit[0] == key and None not in key:
        return hit[1], hit[2]
    meta, raw = fileio.read_json(d / "config.json"), fileio.read_json(d / lifecycle.STATUS_FILE)
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[base] = (key, meta, raw)
    return meta, raw


def load_run(d: Path) -> RunInfo:
    """Read one run folder; never raises for a damaged run (it is reported instead). The returned dicts are
    shared with later reads of the same unchanged files: read them, never change them."""
    d = Path(d)
    info = RunInfo(d.name, d)
    try:
        info.meta, raw = _parsed(d)
        info.config = dict(info.meta.get("config") or {})
        info.status = lifecycle.interpret(raw)  # the truth about dead workers, judged now, never cached
    except RunError as exc:
        info.damaged = str(exc)
    return info


def list_runs(runs_dir: str | Path | None = None) -> list[RunInfo]:
    """All runs in the store, oldest first (creation time, then id)."""
    root = store_dir(runs_dir)
    if not root.is_dir():
        return []
    runs = [load_run(p) for p in root.iterdir() if p.is_dir() and RUN_ID_RE.match(p.name)]
    return sorted(runs, key=lambda r: (float(r.meta.get("created") or 0), r.run_id))


def append_metrics(d: Path, row: dict) -> None:
    """Add one epoch row to metrics.csv (rewritten atomically under the run lock: always a complete file, no lost row)."""
    with lifecycle.run_lock(d):
        rows = read_metrics_rows(d)
        rows.append({k: row.get(k, "") for k in METRIC_COLUMNS})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        fileio.atomic_write_bytes(Path(d) / "metrics.csv", buf.getvalue().encode())


def read_metrics_rows(d: Path) -> list[dict]:
    """metrics.csv as a list of dicts of strings ([] when there is none yet)."""
    try:
        with open(Path(d) / "metrics.csv", newline="") as f:
            return [dict(r) for r in csv.DictReader(f)]
    except (FileNotFoundError, csv.Error, UnicodeDecodeError):
        return []


def best_val_acc(rows: list[dict]) -> float | None:
    """The highest validation accuracy of any finished epoch in metrics.csv rows (None before the first)."""
    accs = []
    for r in rows:
        try:
            accs.append(float(r.get("val_acc")))
        except (TypeError, ValueError):
            continue  # an epoch without validation (or a blank cell)
    accs = [a for a in accs if math.isfinite(a)]
    return max(accs) if accs else None


def read_metrics(d: Path):
    """metrics.csv as a pandas DataFrame of numbers (empty frame with the columns when there is none)."""
    import pandas as pd

    rows = read_metrics_rows(d)
    df = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    numeric = [c for c in METRIC_COLUMNS if c != "path"]
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce")
    return df


def read_test_metrics(d: Path) -> dict | None:
    """test_metrics.json of a run, or None when it has none (or it is damaged)."""
    try:
        return fileio.read_json(Path(d) / "test_metrics.json")
    except RunError:
        return None


def delete_run(run_id: str, runs_dir: str | Path | None = None) -> None:
    """Remove a finished (or damaged) run's folder; RunError for an active run or anything outside the store."""
    root = store_dir(runs_dir).resolve()
    d = root / check_run_id(run_id)
    if d.is_symlink() or not d.is_dir() or d.resolve().parent != root:
        raise RunError(f"There is no run {run_id!r} in {root}; nothing was deleted.")
    # Checked under the run's lock so a worker cannot flip it to running between the check and the removal.
    with run_lock(d):
        try:
            state = read_status(d).get("state")
        except RunError:
            state = None  # damaged status: nothing can be training it
        if state in ACTIVE:
            raise RunError(f"Run {run_id} is {state}. Cancel it on the Trainer page and wait for it to stop "
                           f"before deleting it.")
        shutil.rmtree(d)
