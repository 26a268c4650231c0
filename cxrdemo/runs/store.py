"""The run store: one folder per run, every file written atomically, ids that cannot escape the store."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import platform
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from cxrdemo import paths
from cxrdemo.config import TrainConfig
from cxrdemo.errors import RunError

STATES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
FINAL = ("completed", "failed", "cancelled", "interrupted")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "train_acc", "val_acc", "val_precision", "val_recall",
                  "val_f1", "val_micro_recall", "val_auroc", "lr", "seconds", "images_per_s", "trainable_params",
                  "frozen_groups", "path")
HEARTBEAT_STALE_S = 120.0


# ---------------------------------------------------------------- atomic writes

@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[io.BufferedWriter]:
    """A temporary file in the same folder that replaces `path` (after fsync) only if the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then os.replace: readers never see half a file."""
    with _atomic_file(path) as f:
        f.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str, allow_nan=True) + "\n").encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save straight into the temporary file (no in-memory copy), then an atomic replace."""
    import torch

    with _atomic_file(path) as f:
        torch.save(obj, f)


# ---------------------------------------------------------------- addressing runs

def store_dir(runs_dir: str | Path | None = None) -> Path:
    """The runs directory (created on demand)."""
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
        if not (d / "model.pt").is_file():
            raise RunError(f"The demo model is missing: expected {d / 'model.pt'}.")
        return d
    if allow_path and (os.sep in run or run.startswith(".")):
        d = Path(run).expanduser().resolve()
        if not ((d / "config.json").is_file() or (d / "model.pt").is_file()):
            raise RunError(f"{run} is not a run folder (no config.json or model.pt in it).")
        return d
    d = store_dir(runs_dir) / check_run_id(run)
    if not d.is_dir():
        raise RunError(f"No run {run!r} in {store_dir(runs_dir)}.")
    return d


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "run"


def create_run(config: TrainConfig, runs_dir: str | Path | None = None, scan_summary: dict | None = None,
               name: str = "") -> Path:
    """Make a new run folder with a unique readable id, config.json first, then status 'queued'."""
    root = store_dir(runs_dir)
    base = f"{datetime.now():%Y%m%d-%H%M%S}-{_slug(config.backbone)}-{_slug(config.freeze)}"
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
        atomic_write_json(d / "config.json", {
            "run_id": run_id, "created": time.time(), "config": config.to_dict(), "dataset": scan_summary or {},
            "versions": library_versions(),
        })
        write_status(d, state="queued", epoch=0, created=time.time())
    except OSError as exc:
        # Disk full, read-only or not a folder: say so, and leave no half-made run behind.
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)
        raise RunError(f"Cannot write a new run in {root} ({exc.strerror or exc}): is the disk full or the "
                       "folder read-only?") from None
    return d


def library_versions() -> dict[str, str]:
    """Versions that matter for reproducing a run."""
    import numpy
    import torch
    import torchvision

    from cxrdemo import __version__

    return {"cxrdemo": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__}


# ---------------------------------------------------------------- status

@contextlib.contextmanager
def run_lock(d: Path) -> Iterator[None]:
    """An exclusive lock on one run's status (released by the OS if the holder dies)."""
    with open(Path(d) / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_json(path: Path) -> dict:
    """Read a JSON file written by this store; RunError if it is damaged."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise RunError(f"{path.name} is missing in {path.parent.name}.") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"{path.name} in run {path.parent.name} is damaged ({exc.__class__.__name__}).") from None
    if not isinstance(data, dict):
        raise RunError(f"{path.name} in run {path.parent.name} is damaged (not an object).")
    return data


def write_status(d: Path, **updates: Any) -> dict:
    """Merge `updates` into status.json under the run's lock, stamping the time."""
    with run_lock(d):
        try:
            status = read_json(Path(d) / "status.json")
        except RunError:
            status = {}
        status.update(updates, updated=time.time())
        atomic_write_json(Path(d) / "status.json", status)
        return status


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def worker_is_local(status: dict) -> bool:
    """Whether status.json's pid is a process on this machine (a Ray worker may run on another node)."""
    return status.get("backend") != "ray" or status.get("host") == platform.node()


def read_status(d: Path) -> dict:
    """status.json with the truth about dead workers: an active run whose process is gone reads 'interrupted'."""
    status = read_json(Path(d) / "status.json")
    if status.get("state") in ACTIVE:
        # Another node's pid means nothing here: such a worker is judged by its heartbeat alone.
        pid = status.get("pid") if worker_is_local(status) else None
        stale = time.time() - float(status.get("heartbeat") or status.get("updated") or 0) > HEARTBEAT_STALE_S
        if (pid and not pid_alive(pid)) or (status.get("state") == "running" and stale and not pid_alive(pid)):
            status = {**status, "state": "interrupted",
                      "error": status.get("error") or "The training process stopped unexpectedly (killed or "
                                                      "the machine restarted). Its last finished epoch is kept."}
    return status


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

    @property
    def state(self) -> str:
        return "damaged" if self.damaged else str(self.status.get("state", "unknown"))


def load_run(d: Path) -> RunInfo:
    """Read one run folder; never raises for a damaged run (it is reported instead)."""
    d = Path(d)
    info = RunInfo(d.name, d)
    try:
        info.meta = read_json(d / "config.json")
        info.config = dict(info.meta.get("config") or {})
        info.status = read_status(d)
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
    """Add one epoch row to metrics.csv (rewritten atomically: always a complete file)."""
    path = Path(d) / "metrics.csv"
    rows = read_metrics_rows(d)
    rows.append({k: row.get(k, "") for k in METRIC_COLUMNS})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def read_metrics_rows(d: Path) -> list[dict]:
    """metrics.csv as a list of dicts of strings ([] when there is none yet)."""
    try:
        with open(Path(d) / "metrics.csv", newline="") as f:
            return [dict(r) for r in csv.DictReader(f)]
    except (FileNotFoundError, csv.Error, UnicodeDecodeError):
        return []


def read_metrics(d: Path):
    """metrics.csv as a pandas DataFrame of numbers (empty frame with the columns when there is none)."""
    import pandas as pd

    rows = read_metrics_rows(d)
    df = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    numeric = [c for c in METRIC_COLUMNS if c != "path"]
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce")
    return df


def load_checkpoint(path: Path) -> dict:
    """A model.pt loaded safely (weights_only: a checkpoint cannot run code); RunError when damaged."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise RunError(f"Run {path.parent.name} has no trained model yet.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise RunError(f"The model file of run {path.parent.name} is damaged or unsafe and was not loaded "
                       f"({exc.__class__.__name__}).") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "backbone" not in ckpt:
        raise RunError(f"The model file of run {path.parent.name} is not a cxrdemo model.")
    return ckpt


def read_test_metrics(d: Path) -> dict | None:
    """test_metrics.json of a run, or None when it has none (or it is damaged)."""
    try:
        return read_json(Path(d) / "test_metrics.json")
    except RunError:
        return None
