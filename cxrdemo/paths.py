"""Where runs, weights, caches and the built-in demo data live (environment variable first)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEMO_DATA_DIR = PACKAGE_DIR / "demo_data"
LESSON_DATA_DIR = PACKAGE_DIR / "lesson_data"
LESSON_DATA_PREFIX = "lesson:"  # data = "lesson:bacteria_virus" names a built-in lesson set, on any machine
EXAMPLES_DIR = DEMO_DATA_DIR / "test"
DEMO_RUN_NAME = "demo"


def is_builtin_data(data: str) -> bool:
    """Whether `data` names a set shipped with the package ('demo', 'lesson:<name>'), not a folder of this machine."""
    text = str(data).strip().lower()
    return text == "demo" or text.startswith(LESSON_DATA_PREFIX)


def runs_dir() -> Path:
    """The run store: $CXRDEMO_RUNS_DIR, else ./runs."""
    return Path(os.environ.get("CXRDEMO_RUNS_DIR") or "runs").expanduser().resolve()


def examples_runs_dir() -> Path:
    """The read-only example runs shipped with the project: $CXRDEMO_EXAMPLES_DIR, else the package's examples/runs."""
    env = os.environ.get("CXRDEMO_EXAMPLES_DIR")
    return Path(env).expanduser().resolve() if env else PACKAGE_DIR / "examples" / "runs"


def weights_dir() -> Path:
    """Local weight files: $CXRDEMO_WEIGHTS_DIR, else the repository's weights/ folder."""
    env = os.environ.get("CXRDEMO_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser().resolve()
    repo_weights = PACKAGE_DIR.parent / "weights"
    return repo_weights if repo_weights.is_dir() else Path("weights").resolve()


def demo_run_dir() -> Path:
    """The shipped demo model, a run folder addressed as `--run demo`."""
    return weights_dir() / DEMO_RUN_NAME


def cache_dir() -> Path:
    """Decoded-image cache: $CXRDEMO_CACHE_DIR, else ~/.cache/cxrdemo."""
    env = os.environ.get("CXRDEMO_CACHE_DIR")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "cxrdemo"
    return base.resolve()
