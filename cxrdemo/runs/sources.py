"""A finished run as the starting point of another (`--init run:<id>`): found, checked, its model file loaded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cxrdemo.config import TrainConfig
from cxrdemo.errors import ConfigError, RunError
from cxrdemo.runs import store as runs

if TYPE_CHECKING:
    from cxrdemo.model.checkpoint import ModelFile


def source_run(ref: str, runs_dir: Path | None = None) -> Path:
    """The folder of a completed run that another run may start from (ConfigError with the reason otherwise)."""
    try:
        d = runs.run_dir(ref, runs_dir)
        state = runs.read_status(d).get("state") if (d / "status.json").exists() else "completed"
    except RunError as exc:
        raise ConfigError(f"Cannot start from run {ref}: {exc}") from None
    if state != "completed":
        raise ConfigError(f"Run {ref} is {state}, not completed: it cannot be a starting point.")
    return d


def check_startable(config: TrainConfig, runs_dir: Path | None = None) -> None:
    """Refuse up front, before a run is created, what the recipe itself gets wrong (backbone, freeze, source run, a
    data folder outside a classroom's allowed folders)."""
    from cxrdemo.data.fence import check_roots
    from cxrdemo.model import (
        backbones,  # torch: only a caller that starts training pays for it
    )

    check_roots(config.data)

    spec = backbones.get_spec(config.backbone)
    backbones.frozen_groups(config.freeze, config.backbone)
    if config.init == "imagenet" and not spec.supports_imagenet:
        raise ConfigError(f"{config.backbone} is trained from scratch: ImageNet weights exist only for torchvision "
                          "backbones.")
    if config.init.startswith("run:"):
        d = source_run(config.init[4:], runs_dir)
        try:
            other = (runs.read_json(d / "config.json").get("config") or {}).get("backbone")
        except RunError:
            other = None
        if other and other != config.backbone:
            raise ConfigError(f"Run {config.init[4:]} trained a {other}, not a {config.backbone}: choose that "
                              "backbone to start from it.")


def load_source(config: TrainConfig, runs_dir: Path | None = None) -> ModelFile | None:
    """The model file that `config.init = run:<id>` starts from, or None for other initialisations."""
    if not config.init.startswith("run:"):
        return None
    from cxrdemo.model import checkpoint

    return checkpoint.load(source_run(config.init[4:], runs_dir) / checkpoint.MODEL_FILE)
