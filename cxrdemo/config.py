"""TrainConfig: every hyper-parameter and its default, in one frozen dataclass."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from cxrdemo.errors import ConfigError

AUGMENTATIONS = ("none", "light", "acquisition")
BALANCING = ("sampler", "loss", "none")
OPTIMIZERS = ("adam", "sgd")
HEADS = ("linear", "fc512")
THRESHOLDS = ("argmax", "val", "sens:0.95", "spec:0.95", "spec:0.97")  # presets; any spec:x / sens:x works
_THRESHOLD_RE = re.compile(r"^(argmax|val|(spec|sens):(0\.\d+))$")
INTENSITY = ("none", "equalize")
PRECISIONS = ("auto", "fp32", "bf16")
SELECTIONS = ("val_loss", "val_auroc")
_TEXT_FIELDS = ("data", "backbone", "init", "freeze", "optimizer", "augment", "intensity", "balance", "head",
                "threshold", "precision", "select")
_FREEZE_RE = re.compile(r"^(none|head|\d+|gradual:\d+)$")


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe. Defaults follow the papers (Adam 1e-3, wd 1e-4, 224 px, early stopping)."""

    data: str = "demo"
    backbone: str = "resnet18"
    init: str = "scratch"  # imagenet | scratch | run:<id>
    freeze: str = "none"  # none | head | k | gradual:T
    epochs: int = 10
    img_size: int = 224
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    step_size: int = 10  # StepLR every N epochs, 0 = constant lr
    gamma: float = 0.1
    patience: int = 5  # early stopping on the `select` criterion, 0 = off
    select: str = "val_loss"  # which epoch is kept: lowest val loss, or highest val AUROC (ranking, for --threshold val)
    augment: str = "none"  # none | light (papers) | acquisition (shift-robust)
    intensity: str = "none"  # none | equalize (per-image histogram equalisation, saved with the model)
    balance: str = "sampler"  # sampler | loss | none
    head: str = "linear"  # linear | fc512 (two 512-unit layers)
    dropout: float = 0.0
    trunk_lr_factor: float = 1.0  # lr multiplier for the trunk after a gradual unfreeze
    ema: float = 0.0  # 0 = off; else keep an exponential moving average of the weights (e.g. 0.998) and use it
    threshold: str = "argmax"  # argmax | val (Youden) | spec:x | sens:x (binary: decision threshold chosen on val)
    precision: str = "auto"  # auto (bf16 where the hardware runs it natively) | fp32 | bf16 (mixed-precision training)
    seed: int = 0
    threads: int = 0  # 0 = choose for this machine
    split_seed: int = 0
    max_images: int = 0  # 0 = all; otherwise a stratified subset per split (quick demos)
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def gradual_epoch(self) -> int | None:
        """T for `gradual:T`, else None."""
        return int(self.freeze.split(":")[1]) if self.freeze.startswith("gradual:") else None


def threshold_how(rule: str) -> str:
    """How a tuned threshold was chosen, as a phrase after 'threshold' ('' for argmax, which has none)."""
    if rule == "argmax":
        return ""
    if rule == "val":
        return "tuned on validation images for balanced accuracy"
    kind, target = rule.split(":")
    what = "specificity (normals called normal)" if kind == "spec" else "sensitivity (disease found)"
    return f"that keeps {100 * float(target):g}% {what} on validation images"


def threshold_words(rule: str) -> str:
    """A decision rule in words, for a form or a model card."""
    return f"a threshold {threshold_how(rule)}" if rule != "argmax" else "the most probable class"


def _num(name: str, value: Any, kind: type) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(f"{name} must be a{'n integer' if kind is int else ' number'}, got {value!r}.")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}.")


def validate(c: TrainConfig) -> None:
    """Raise ConfigError with a plain sentence for any option a user could get wrong."""
    for name in _TEXT_FIELDS:  # a hand-edited config.json may hold anything
        if not isinstance(getattr(c, name), str):
            raise ConfigError(f"{name} must be text, got {getattr(c, name)!r}.")
    for name in ("epochs", "img_size", "batch_size", "step_size", "patience", "seed", "threads", "split_seed", "max_images"):
        _num(name, getattr(c, name), int)
    for name in ("lr", "weight_decay", "gamma", "dropout", "trunk_lr_factor", "ema"):
        _num(name, getattr(c, name), float)
    if c.epochs < 1:
        raise ConfigError(f"Epochs must be at least 1 (got {c.epochs}).")
    if c.epochs > 1000:
        raise ConfigError(f"Epochs must be at most 1000 (got {c.epochs}).")
    if not (32 <= c.img_size <= 1024):
        raise ConfigError(f"Image size must be between 32 and 1024 pixels (got {c.img_size}).")
    if c.batch_size < 1:
        raise ConfigError(f"Batch size must be at least 1 (got {c.batch_size}).")
    if not (0 < c.lr <= 10):
        raise ConfigError(f"Learning rate must be a positive number such as 0.001 (got {c.lr}).")
    if c.weight_decay < 0:
        raise ConfigError(f"Weight decay cannot be negative (got {c.weight_decay}).")
    if not (0 <= c.ema < 1):
        raise ConfigError(f"The weight average (ema) must be in [0, 1), e.g. 0.998 (got {c.ema}).")
    if not (0 <= c.dropout < 1):
        raise ConfigError(f"Dropout must be in [0, 1) (got {c.dropout}).")
    if c.step_size < 0 or c.patience < 0 or c.threads < 0 or c.max_images < 0:
        raise ConfigError("Step size, patience, threads and max images cannot be negative.")
    if not (0 < c.gamma <= 1) or not (0 < c.trunk_lr_factor <= 1):
        raise ConfigError("gamma and trunk_lr_factor must be in (0, 1].")
    if not _FREEZE_RE.match(str(c.freeze)):
        raise ConfigError(f"Freeze level {c.freeze!r} is not one of: none, head, a number k, gradual:T.")
    if c.gradual_epoch is not None and not (1 <= c.gradual_epoch):
        raise ConfigError("gradual:T needs T of at least 1 epoch.")
    for name, allowed in (("augment", AUGMENTATIONS), ("balance", BALANCING), ("optimizer", OPTIMIZERS),
                          ("head", HEADS),
                          ("intensity", INTENSITY), ("precision", PRECISIONS),
                          ("select", SELECTIONS)):
        if getattr(c, name) not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)} (got {getattr(c, name)!r}).")
    m = _THRESHOLD_RE.match(c.threshold)
    if not m or (m.group(3) and not 0.5 <= float(m.group(3)) < 1):
        raise ConfigError(f"Decision rule {c.threshold!r} is not one of: argmax, val, spec:x or sens:x with x a "
                          "fraction between 0.5 and 1 (e.g. spec:0.97 keeps 97% specificity on validation).")
    init = str(c.init)
    if not (init in ("imagenet", "scratch") or (init.startswith("run:") and len(init) > 4)):
        raise ConfigError(f"Initialisation {init!r} is not one of: imagenet, scratch, run:<run id>.")
    if not c.data:
        raise ConfigError("Choose a dataset folder (or 'demo' for the built-in one).")
