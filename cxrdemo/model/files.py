"""Where a run's model lives: the file names and the questions about them, torch-free.

`model/checkpoint.py` owns the model file and re-exports these names; they live here, apart, because the job
side (the run store, `jobs list`, a waiting worker) asks whether a run has a model and must not load torch to
ask, and neither should the light views a page imports before anything is predicted.
"""

from __future__ import annotations

from pathlib import Path

MODEL_FILE = "model.pt"
BEST_EPOCH_FILE = "best-epoch.pt"


def model_path(run_dir: str | Path) -> Path:
    """The model file of the run folder `run_dir` (it may not exist yet)."""
    return Path(run_dir) / MODEL_FILE


def has_model(run_dir: str | Path) -> bool:
    """Whether the run folder holds a finished model file (examples and unfinished runs do not)."""
    return model_path(run_dir).is_file()
