"""What every command line parser shares: train flags generated from the option declarations, --runs-dir, JSON."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from cxrdemo.config import TrainConfig, option_fields

EXIT_BAD_INPUT = 2
RUNS_DIR_HELP = "run store (default $CXRDEMO_RUNS_DIR or ./runs)"
_TYPES = {"int": int, "float": float}


def runs_dir_parent() -> argparse.ArgumentParser:
    """A parent parser giving a sub-command `--runs-dir` (absent: the value given before the sub-command stays)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--runs-dir", default=argparse.SUPPRESS, help=RUNS_DIR_HELP)
    return p


def runs_dir(args: argparse.Namespace) -> Path | None:
    """The run store named by --runs-dir, or None for the default."""
    return Path(args.runs_dir) if getattr(args, "runs_dir", None) else None


def add_train_flag(p: argparse.ArgumentParser, name: str, **overrides: Any) -> None:
    """The flag of TrainConfig field `name`, as declared (type, default, choices, help); `overrides` win."""
    f = next(f for f in option_fields() if f.name == name)
    m = f.metadata
    kwargs: dict[str, Any] = {"default": TrainConfig().to_dict()[name], "help": m["help"]}
    if f.type in _TYPES:
        kwargs["type"] = _TYPES[f.type]
    if m["choices"]:
        kwargs["choices"] = m["choices"]
    if "const" in m:  # a bare flag means this value
        kwargs.update(nargs="?", const=m["const"])
    if "metavar" in m:
        kwargs["metavar"] = m["metavar"]
    kwargs.update(overrides)
    p.add_argument(m.get("flag") or "--" + name.replace("_", "-"), dest=name, **kwargs)


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Every TrainConfig field as a flag, defaults from the dataclass, plus --name."""
    for f in option_fields():
        add_train_flag(p, f.name)
    p.add_argument("--name", default="", help="a short label added to the run id")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A validated TrainConfig from parsed flags."""
    names = {f.name for f in option_fields()}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def to_json(obj: Any) -> str:
    """One JSON line; NaN and infinity become null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), separators=(", ", ": "))
