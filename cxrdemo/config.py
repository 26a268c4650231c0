"""TrainConfig: every training option declared once (type, default, choices, help, label), in one frozen dataclass.

Each field carries its declaration in `metadata`; the CLI flags (cxrdemo/cli/options.py) and the Trainer form
(cxrdemo/views/trainer.py) are generated from it, so adding an option is one edit here. Freeze levels and
decision rules are small value types, parsed once when a config is built; config.json keeps their text.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from cxrdemo.errors import ConfigError
from cxrdemo.population import Population

AUGMENTATIONS = ("none", "light", "acquisition")
BALANCING = ("sampler", "loss", "none")
OPTIMIZERS = ("adam", "sgd")
HEADS = ("linear", "fc512")
THRESHOLDS = ("argmax", "val", "sens:0.95", "spec:0.95", "spec:0.97")  # presets; any spec:x / sens:x works
INTENSITY = ("none", "equalize")
PRECISIONS = ("auto", "fp32", "bf16")
SELECTIONS = ("val_loss", "val_auroc")
SPLIT_BY = ("patient", "image")
IMG_SIZES = (64, 128, 160, 224, 299)  # the form's presets; the CLI takes any size from 32 to 1024
_FREEZE_RE = re.compile(r"^(none|head|[0-9]+|gradual:[0-9]+)$")
_MARKER_RE = re.compile(r"^([^:]+):(0(\.[0-9]+)?|1(\.0*)?|\.[0-9]+)$")
_RULE_RE = re.compile(r"^(argmax|val|(spec|sens):(0\.[0-9]+))$")


# ---------------------------------------------------------------- value types

@dataclass(frozen=True)
class FreezeLevel:
    """Which layers stay fixed: none | head | k (the first k groups) | gradual:T (head only for T epochs)."""

    kind: str  # "none" | "head" | "groups" | "gradual"
    n: int = 0  # k for "groups", T for "gradual"

    @classmethod
    def parse(cls, text: str | FreezeLevel) -> FreezeLevel:
        """The level written as `text`; ConfigError with a sentence when it is not one."""
        if isinstance(text, cls):
            return text
        if not isinstance(text, str):
            raise ConfigError(f"freeze must be text, got {text!r}.")
        if not _FREEZE_RE.match(text):
            raise ConfigError(f"Freeze level {text!r} is not one of: none, head, a number k, gradual:T.")
        if text in ("none", "head"):
            return cls(text)
        if text.startswith("gradual:"):
            t = int(text.split(":")[1])
            if t < 1:
                raise ConfigError("gradual:T needs T of at least 1 epoch.")
            return cls("gradual", t)
        return cls("groups", int(text))

    @property
    def gradual_epochs(self) -> int | None:
        """T for `gradual:T`, else None."""
        return self.n if self.kind == "gradual" else None

    def __str__(self) -> str:
        return {"groups": str(self.n), "gradual": f"gradual:{self.n}"}.get(self.kind, self.kind)


@dataclass(frozen=True)
class DecisionRule:
    """How two classes are told apart: argmax | val (Youden on validation) | spec:x | sens:x (x in [0.5, 1))."""

    kind: str  # "argmax" | "val" | "spec" | "sens"
    target: float | None = None  # x for spec:x and sens:x

    @classmethod
    def parse(cls, text: str | DecisionRule) -> DecisionRule:
        """The rule written as `text`; ConfigError with a sentence when it is not one."""
        if isinstance(text, cls):
            return text
        if not isinstance(text, str):
            raise ConfigError(f"threshold must be text, got {text!r}.")
        m = _RULE_RE.match(text)
        if not m or (m.group(3) and not 0.5 <= float(m.group(3)) < 1):
            raise ConfigError(f"Decision rule {text!r} is not one of: argmax, val, spec:x or sens:x with x a "
                              "fraction between 0.5 and 1 (e.g. spec:0.97 keeps 97% specificity on validation).")
        return cls(m.group(2), float(m.group(3))) if m.group(2) else cls(text)

    @property
    def tuned(self) -> bool:
        """True when a threshold is chosen on validation (every rule but argmax)."""
        return self.kind != "argmax"

    def __str__(self) -> str:
        return self.kind if self.target is None else f"{self.kind}:{self.target!r}"


# ---------------------------------------------------------------- declarations

def option(default: Any, help: str | None = None, *, label: str = "", group: str = "", choices: tuple = (),
           labels: dict[str, str] | None = None, **more: Any) -> Any:
    """A TrainConfig field with its declaration.

    help: the CLI help; label: the form label (no label: CLI only); group: where the form shows it
    ("data", "network", "training", "more"); choices: allowed values (CLI choices, form options);
    labels: value -> words for the form. More keys: flag (default --field-name), metavar, const (a bare flag's
    value), presets (form options where any value is allowed), tip (form tooltip), min/max/step/format (form
    number bounds), custom (the page draws this widget itself, with choices from the views layer).
    """
    return field(default=default, metadata={"help": help, "label": label, "group": group, "choices": tuple(choices),
                                            "labels": labels or {}, **more})


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe. Defaults follow the papers (Adam 1e-3, wd 1e-4, 224 px, early stopping)."""

    data: str = option("demo", "dataset folder, or 'demo' for the built-in one", label="Dataset", group="data",
                       custom=True)
    backbone: str = option("resnet18", "see `python -m cxrdemo backbones`", label="Backbone", group="network",
                           custom=True)
    init: str = option("scratch", "imagenet | scratch | run:<run id>", label="Starting weights", group="network",
                       custom=True)
    freeze: FreezeLevel = option(FreezeLevel("none"), "none | head | k (first k groups) | gradual:T",
                                 label="Freeze level (which layers stay fixed)", group="network", custom=True)
    epochs: int = option(10, label="Epochs", group="training", min=1, max=1000)
    img_size: int = option(224, label="Image size (pixels)", group="training", presets=IMG_SIZES)
    batch_size: int = option(32, label="Batch size", group="training", min=1, max=512)
    lr: float = option(1e-3, label="Learning rate", group="training", min=1e-6, max=1.0, format="%.5f", step=1e-4)
    weight_decay: float = option(1e-4, label="Weight decay", group="more", min=0.0, max=1.0, format="%.5f",
                                 step=1e-4)
    optimizer: str = option("adam", label="Optimiser", group="more", choices=OPTIMIZERS,
                            labels={"adam": "Adam", "sgd": "SGD"})
    step_size: int = option(10, "decay lr x gamma every N epochs (0 = off)")  # StepLR every N epochs
    gamma: float = option(0.1)
    patience: int = option(5, "early stopping patience (0 = off)", label="Early-stopping patience (0 = off)",
                           group="training", min=0, max=1000)  # on the `select` criterion
    select: str = option("val_loss", "the epoch kept: lowest val loss (default) or highest val AUROC (ranking; "
                         "suits a tuned --threshold)", label="Keep the epoch with", group="more", choices=SELECTIONS,
                         labels={"val_loss": "lowest validation loss", "val_auroc": "best validation AUROC (ranking)"},
                         tip="Early stopping watches the same score. AUROC suits a threshold tuned on validation.")
    augment: str = option("none", "none | light (papers) | acquisition; bare --augment means light", const="light",
                          label="Augmentation", group="training", choices=AUGMENTATIONS,
                          labels={"none": "none", "light": "light (as in the papers)",
                                  "acquisition": "acquisition (scanners)"},
                          tip="Light: flips, small shifts and rotations, as in the papers. Acquisition: also contrast, "
                              "blur and noise, so the model copes better with other scanners' images.")
    intensity: str = option("none", "per-image intensity standardisation, repeated at prediction (equalize = "
                            "histogram)", label="Intensity", group="more", choices=INTENSITY,
                            labels={"none": "as recorded", "equalize": "histogram-equalised"},
                            tip="Histogram equalisation evens out exposure differences between scanners; the model "
                                "repeats it on every image it is shown later.")
    balance: str = option("sampler", label="Class balancing", group="training", choices=BALANCING,
                          labels={"sampler": "oversample the rarer class", "loss": "weight the loss by class",
                                  "none": "no balancing"})
    head: str = option("linear", label="Head", group="more", choices=HEADS,
                       labels={"linear": "one linear layer", "fc512": "two 512-unit layers (papers)"})
    dropout: float = option(0.0, label="Dropout on the head", group="more", min=0.0, max=0.9, step=0.1)
    trunk_lr_factor: float = option(1.0)  # lr multiplier for the trunk after a gradual unfreeze
    ema: float = option(0.0, "average the weights over steps (e.g. 0.998; 0 = off)", label="Weight averaging (0 = off)",
                        group="more", min=0.0, max=0.9999, format="%.4f",
                        tip="Keep a moving average of the weights (e.g. 0.998) and save that: steadier results.")
    threshold: DecisionRule = option(
        DecisionRule("argmax"), "decision rule for two classes: argmax | val (balanced on validation) | spec:x (keep "
        "specificity >= x on validation, e.g. spec:0.97) | sens:x (keep sensitivity >= x)", metavar="RULE",
        label="Decision rule", group="more", presets=THRESHOLDS,
        tip="For two classes. A fixed specificity or sensitivity on validation moves less than a balanced cut when "
            "the model meets another site's images.")
    precision: str = option("auto", "auto = float32 or bfloat16 mixed precision, whichever a short timed trial "
                            "finds faster on this machine (remembered)", label="Arithmetic precision", group="more", choices=PRECISIONS,
                            labels={"auto": "automatic (measured here)", "fp32": "full (float32)",
                                    "bf16": "mixed (bfloat16)"},
                            tip="Mixed precision trains up to 2-3x faster on CPUs with bfloat16 instructions and on GPUs; "
                                "automatic measures it on this computer (a small dataset: during its first epochs, then "
                                "remembered; `python -m cxrdemo tune --backbone B --size S` measures it ahead). The "
                                "saved model and every prediction stay full precision.")
    seed: int = option(0, label="Seed", group="more", min=0, max=2**31 - 1)
    probes: int = option(3, "validation images per class whose answer and heatmap are kept after every epoch "
                         "(0 = off)", label="Probe images per class (0 = off)", group="more", min=0, max=20,
                         tip="The Compare page replays how their answer and heatmap change while the model learns.")
    threads: int = option(0)  # 0 = choose for this machine
    split_seed: int = option(0)
    max_images: int = option(0, "cap images per split (quick demos)", label="Images per split (0 = all)",
                             group="training", min=0, max=100000,
                             tip="A smaller stratified subset gives a quick demo run.")  # stratified per split
    train_share: float = option(1.0, "train on this share of the training images (stratified, by split seed)")
    split_by: str = option("patient", "a folder without val/test folders is split by patient (file names) or by "
                           "image (one patient's films may land on both sides: leakage, for lesson 4)",
                           choices=SPLIT_BY)
    marker: str = option("", "burn a marker into a share of one class's training and validation images: "
                         "CLASS:SHARE, e.g. VIRUS:0.9 (the test is repeated on marked copies)", metavar="CLASS:SHARE")
    tag: str = option("", "a label kept with the run (a lesson tags its runs with its name)")
    # Whom the training films came from, as the user states it; empty: the dataset's POPULATION.json, else the
    # starting run's (same data set), else not stated (model/train.training_population).
    population_age: str = option("", "the training patients' ages in years, YOUNGEST-OLDEST (e.g. 1-5); prediction "
                                 "flags patients outside them", label="Patients' ages in years (e.g. 1-5)",
                                 group="population", metavar="YOUNGEST-OLDEST",
                                 tip="Whom the training films came from. Diagnosis flags a patient outside these "
                                     "ages (from the DICOM header or the age you type). Empty: not stated.")
    population_source: str = option("", "where the training films come from (hospital, data set, paper)",
                                    label="Where the films come from", group="population", metavar="TEXT",
                                    tip="A hospital, data set or paper; shown on the model card.")

    def __post_init__(self) -> None:
        # frozen: the parsed values replace their text once, here
        object.__setattr__(self, "freeze", FreezeLevel.parse(self.freeze))
        object.__setattr__(self, "threshold", DecisionRule.parse(self.threshold))
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (freeze level and decision rule as their text)."""
        return {f.name: _text(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def gradual_epoch(self) -> int | None:
        """T for `gradual:T`, else None."""
        return self.freeze.gradual_epochs


def _text(value: Any) -> Any:
    return str(value) if isinstance(value, (FreezeLevel, DecisionRule)) else value


def option_fields() -> tuple[dataclasses.Field, ...]:
    """Every TrainConfig field with its declaration (metadata), in order."""
    return fields(TrainConfig)


# ---------------------------------------------------------------- validation

def _num(name: str, value: Any, kind: type) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(f"{name} must be a{'n integer' if kind is int else ' number'}, got {value!r}.")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}.")


def validate(c: TrainConfig) -> None:
    """Raise ConfigError with a plain sentence for any option a user could get wrong."""
    for f in fields(c):  # a hand-edited config.json may hold anything
        value = getattr(c, f.name)
        if f.type == "str" and not isinstance(value, str):
            raise ConfigError(f"{f.name} must be text, got {value!r}.")
        if f.type in ("int", "float"):
            _num(f.name, value, int if f.type == "int" else float)
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
    if not (0 <= c.probes <= 20):
        raise ConfigError(f"Probe images per class must be between 0 and 20 (got {c.probes}).")
    if not (0 < c.gamma <= 1) or not (0 < c.trunk_lr_factor <= 1):
        raise ConfigError("gamma and trunk_lr_factor must be in (0, 1].")
    for f in fields(c):
        allowed = f.metadata["choices"]
        if allowed and getattr(c, f.name) not in allowed:
            raise ConfigError(f"{f.name} must be one of {', '.join(allowed)} (got {getattr(c, f.name)!r}).")
    init = str(c.init)
    if not (init in ("imagenet", "scratch") or (init.startswith("run:") and len(init) > 4)):
        raise ConfigError(f"Initialisation {init!r} is not one of: imagenet, scratch, run:<run id>.")
    if not c.data:
        raise ConfigError("Choose a dataset folder (or 'demo' for the built-in one).")
    if not (0 < c.train_share <= 1):
        raise ConfigError(f"The share of training images must be in (0, 1], e.g. 0.25 (got {c.train_share}).")
    Population.stated(c.population_age, c.population_source)
    if c.marker and not _MARKER_RE.match(c.marker):
        raise ConfigError(f"Marker {c.marker!r} is not CLASS:SHARE with a share between 0 and 1, e.g. VIRUS:0.9.")


def parse_marker(text: str) -> tuple[str, float] | None:
    """(class name, share) of a validated `marker` option, or None when it is empty."""
    if not text:
        return None
    name, share = text.rsplit(":", 1)
    return name, float(share)
