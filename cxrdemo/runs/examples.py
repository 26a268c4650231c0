"""Example runs shipped with the project: read-only copies of finished lesson runs (curves, metrics, per-image
predictions; no weights), so a fresh install shows finished lessons. The store marks them `example`.

They live in cxrdemo/examples/runs (package data; $CXRDEMO_EXAMPLES_DIR elsewhere) and are made by
`python -m cxrdemo lessons build-examples`. They carry no model.pt: nothing may predict with, resume, cancel or
delete them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cxrdemo import fileio, paths
from cxrdemo.runs import store as runs

EXAMPLES_RUNS_DIR = paths.PACKAGE_DIR / "examples" / "runs"
KEPT = ("config.json", "status.json", "metrics.csv", "test_metrics.json", "test_predictions.csv")
KEPT_DIRS = ("probes",)  # per-epoch probe images; copied when present
BUILD_COMMAND = "python -m cxrdemo lessons build-examples"


def list_examples(examples_dir: Path | None = None) -> list[runs.RunInfo]:
    """Every shipped example run, oldest first, each marked `example` (read-only: never deleted nor resumed)."""
    infos = runs.list_runs(examples_dir or paths.examples_runs_dir())
    for info in infos:
        info.example = True
    return infos


def wall_seconds(info: runs.RunInfo) -> float | None:
    """How long the run took where it was made (claimed to finished, from its status), or None when unknown."""
    try:
        seconds = float(info.status["finished"]) - float(info.status["started"])
    except (KeyError, TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def copy_as_example(d: Path, examples_dir: Path | None = None) -> Path:
    """Copy a finished run's small files into the examples folder, without weights or paths of this machine."""
    out = Path(examples_dir or EXAMPLES_RUNS_DIR) / d.name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in KEPT:
        if (d / name).is_file():
            shutil.copy2(d / name, out / name)
    for name in KEPT_DIRS:
        if (d / name).is_dir():
            shutil.copytree(d / name, out / name)
    meta = fileio.read_json(out / "config.json")
    dataset = dict(meta.get("dataset") or {})
    # The examples ship: keep the data's name ('lesson:bacteria_virus'), not this machine's folders.
    dataset.update(root=meta.get("config", {}).get("data", ""), skipped=[])
    meta.update(dataset=dataset, decode_skipped=[], example=True)
    fileio.atomic_write_json(out / "config.json", meta)
    return out
