"""model.pt, owned here alone: save, load (format checked, every field validated), upgrade, rebuild the net.

A model file carries everything prediction needs, so prediction never guesses: the weights, the
backbone, the class names, the preprocessing record that prediction applies, and the decision chosen
on validation. Formats:

  cxrdemo-model/1  a `threshold` number (or None) beside the rule in config["threshold"]; `num_classes`
  cxrdemo-model/2  one `decision` record {rule, value}; optional records calibration, conformal, domain, and
                   population {age_years, source, view} (whom the training films came from; absent: not stated)

Version 1 files (the shipped demo model is one) load and are upgraded in memory; any other format is
refused with a sentence. Files are loaded with torch.load(weights_only=True): a model file cannot run code.

While a run trains, its best epoch's weights live in `best-epoch.pt` (written atomically at every
better epoch); `model.pt` is written once, complete with its decision, when training ends — completed,
or cancelled after at least one finished epoch — and `best-epoch.pt` is then removed. A worker killed
outright leaves `best-epoch.pt` and no `model.pt`: such a run has no model to predict with.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from cxrdemo import fileio
from cxrdemo.config import HEADS, TrainConfig
from cxrdemo.data.cache import CachedImages, load_images
from cxrdemo.data.imageio import (IMAGENET_MEAN, IMAGENET_STD, INTENSITY_MODES, adjust_intensity, normalize_batch,
                                resize_to_uint8)
from cxrdemo.data.scan import dataset_name
from cxrdemo.data.shrink import shrink_policy
from cxrdemo.errors import ConfigError, RunError
from cxrdemo.model import backbones, trust_records
from cxrdemo.model.files import BEST_EPOCH_FILE, MODEL_FILE, has_model, model_path  # noqa: F401 - re-exported
from cxrdemo.population import Population

FORMAT = "cxrdemo-model/2"
FORMAT_1 = "cxrdemo-model/1"
_BEST_EPOCH_FORMAT = "cxrdemo-best-epoch/1"
RECORD_NAMES = ("calibration", "conformal", "domain")  # fitted on validation after training, by later steps
RESIZE = "whole image squashed to a square, bilinear with antialias"  # data.imageio.resize_to_uint8
IMG_SIZE_RANGE = (32, 1024)  # the sizes TrainConfig accepts


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input: prediction applies exactly this record."""

    img_size: int
    intensity: str = "none"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = RESIZE
    # The one reader's shrink-on-read step (long side, method, aspect limit): training and prediction read alike.
    shrink: dict = field(default_factory=shrink_policy, compare=True)

    def to_dict(self) -> dict:
        """The record as saved in model.pt."""
        return {"img_size": self.img_size, "intensity": self.intensity, "mean": list(self.mean),
                "std": list(self.std), "resize": self.resize, "shrink": dict(self.shrink)}

    # The record applies itself (torchvision's habit: weights carry their transforms). Every consumer -- training,
    # evaluation, prediction, probes, the scorecard, the trust fitting -- goes through these three steps.

    def prepare(self, grey: np.ndarray) -> torch.Tensor:
        """A [0, 1] HxW greyscale image (as read by data.read_image) -> uint8 1xSxS, as the network's cache holds it."""
        return self.adjust(resize_to_uint8(grey, self.img_size))

    def adjust(self, images: torch.Tensor) -> torch.Tensor:
        """Resized uint8 (N)x1xSxS images (the decode-once cache's) -> the same after this record's intensity step."""
        return adjust_intensity(images, self.intensity)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Prepared uint8 (N)x1xSxS images -> the float32 Nx3xSxS batch the network takes."""
        return normalize_batch(images, self.mean, self.std)

    def load(self, items: list[tuple[str, int]], **kwargs: Any) -> CachedImages:
        """Decode, resize (once per files and size: the cache) and intensity-adjust a split's images."""
        c = load_images(items, self.img_size, **kwargs)
        return c if self.intensity == "none" else CachedImages(self.adjust(c.images), c.labels, c.paths, c.skipped)

    def __call__(self, grey: np.ndarray) -> torch.Tensor:
        """A [0, 1] HxW greyscale image -> the 1x3xSxS float input of the network."""
        return self.normalize(self.prepare(grey))


@dataclass(frozen=True)
class Decision:
    """How probabilities become a class: `rule` as in TrainConfig.threshold, `value` the p(class 1) cut (None: argmax)."""

    rule: str = "argmax"
    value: float | None = None

    def to_dict(self) -> dict:
        """The record as saved in model.pt."""
        return {"rule": self.rule, "value": self.value}


@dataclass(frozen=True)
class ModelFile:
    """The validated content of a model.pt."""

    backbone: str
    classes: tuple[str, ...]
    state_dict: dict[str, torch.Tensor] = field(repr=False, compare=False)
    preprocessing: Preprocessing
    decision: Decision = Decision()
    head: str = "linear"
    dropout: float = 0.0
    epoch: int = 0
    val_loss: float = math.nan
    train_path: str = ""  # full | cached-features: how the best epoch was trained
    config: dict = field(default_factory=dict)  # the TrainConfig that produced it, as a dict
    records: dict = field(default_factory=dict)  # calibration, conformal, domain: each a dict, when fitted
    population: Population | None = None  # whom the training films came from; None: not stated

    def to_dict(self) -> dict:
        """The dict saved as model.pt (format 2)."""
        stated = {"population": self.population.to_record()} if self.population else {}
        return {"format": FORMAT, "backbone": self.backbone, "classes": list(self.classes), "head": self.head,
                "dropout": self.dropout, "state_dict": self.state_dict, "preprocessing": self.preprocessing.to_dict(),
                "decision": self.decision.to_dict(), "epoch": self.epoch, "val_loss": self.val_loss,
                "train_path": self.train_path, "config": _without_paths(self.config), **self.records, **stated}


def _without_paths(config: dict) -> dict:
    """The config as a model file keeps it: the dataset by name, never a folder of the machine it was trained on."""
    if "data" not in config:
        return config
    return {**config, "data": dataset_name(str(config["data"]))}


# ---------------------------------------------------------------- writing

def save(model: ModelFile, path: Path) -> None:
    """Validate `model`, then write it to `path` atomically (a reader never sees half a file)."""
    from_dict(model.to_dict(), Path(path).parent.name)  # never write what load would refuse
    _torch_save(model.to_dict(), path)


def update_records(path: Path, **records: dict) -> ModelFile:
    """Rewrite model.pt atomically with extra records (calibration, conformal, domain); returns the new content."""
    unknown = sorted(set(records) - set(RECORD_NAMES))
    if unknown:
        raise ValueError(f"unknown model-file records {unknown}; known: {RECORD_NAMES}")
    model = load(path, check_records=False)  # the records being replaced may be the damaged ones
    new = replace(model, records={**model.records, **records})
    save(new, path)
    return new


def set_population(path: Path, population: Population | None) -> ModelFile:
    """Rewrite model.pt atomically with its population record (None: not stated); the weights are untouched."""
    new = replace(load(path), population=population)
    save(new, path)
    return new


def save_best_epoch(run_dir: Path, state_dict: dict[str, torch.Tensor], epoch: int, val_loss: float,
                    train_path: str) -> None:
    """The weights of the best epoch so far, beside (never as) model.pt: they have no decision yet."""
    # contiguous() copies only channels-last tensors; torch.save copies the rest itself, so no clone.
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}  # .cpu(): no-op on the CPU
    _torch_save({"format": _BEST_EPOCH_FORMAT, "state_dict": state, "epoch": epoch, "val_loss": float(val_loss),
                 "train_path": train_path}, Path(run_dir) / BEST_EPOCH_FILE)


def load_best_epoch(run_dir: Path) -> tuple[dict[str, torch.Tensor], int, float, str]:
    """(state_dict, epoch, val_loss, train path) of the best epoch saved by save_best_epoch."""
    path = Path(run_dir) / BEST_EPOCH_FILE
    raw = _torch_load(path, f"Run {path.parent.name} has no finished epoch to keep.")
    check = _Checker(path.parent.name, "best-epoch file")
    if raw.get("format") != _BEST_EPOCH_FORMAT:
        check.fail("it is not a cxrdemo best-epoch file")
    return (check.state_dict(raw), check.integer(raw, "epoch", 0, 10**6), check.number(raw, "val_loss"),
            check.text(raw, "train_path"))


def discard_best_epoch(run_dir: Path) -> None:
    """Remove best-epoch.pt once model.pt holds its weights."""
    (Path(run_dir) / BEST_EPOCH_FILE).unlink(missing_ok=True)


# torch's zip writer turns a short write into a RuntimeError ("[enforce fail at inline_container.cc:672] .
# unexpected pos 704 vs 598" on a full tmpfs; "file write failed" in other versions) and drops the errno.
_SHORT_WRITE = ("unexpected pos", "file write failed", "failed writing")


def _torch_save(obj: Any, path: Path) -> None:
    try:
        with fileio.atomic_file(Path(path)) as f:  # torch.save straight into the temporary file: no in-memory copy
            torch.save(obj, f)
    except RuntimeError as exc:
        if not any(s in str(exc) for s in _SHORT_WRITE):
            raise
        # A write that came up short is a full disk (or quota) in practice: the same OSError a plain write gives.
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc


# ---------------------------------------------------------------- reading

def load(path: Path, check_records: bool = True) -> ModelFile:
    """A model.pt loaded safely and validated field by field; RunError with one sentence otherwise."""
    path = Path(path)
    return from_dict(_torch_load(path, f"Run {path.parent.name} has no trained model yet."), path.parent.name,
                     check_records)


def rebuild_net(model: ModelFile) -> backbones.Net:
    """The network of a model file with its weights, in eval mode."""
    net = backbones.build_backbone(model.backbone, len(model.classes), head=model.head, dropout=model.dropout)
    try:
        missing, unexpected = net.load_state_dict(model.state_dict, strict=False)
    except RuntimeError as exc:  # a weight of the wrong shape; torch's message spans lines
        raise RunError(f"The saved weights do not fit a {model.backbone} ({' '.join(str(exc).split())[:160]}).") \
            from None
    if missing or unexpected:
        raise RunError(f"The saved weights do not fit a {model.backbone}: {len(missing)} missing and "
                       f"{len(unexpected)} unknown, such as {(missing or unexpected)[0]!r}.")
    _check_domain_width(model, net.eval())
    return net


def _check_domain_width(model: ModelFile, net: backbones.Net) -> None:
    """A domain record over several stages describes as many features as those stages give (one is checked on load)."""
    record = model.records.get("domain")
    if not record or record.get("layers", 1) == 1:
        return
    from cxrdemo.model import domain

    size = model.preprocessing.img_size
    width = domain.features(net, torch.zeros(1, 3, size, size), record["layers"]).shape[1]
    if width != record["feature_dim"]:
        raise RunError(f"The model's in-domain description is damaged: it describes {record['feature_dim']} features "
                       f"and the {model.backbone} gives {width}; fit it again with `python -m cxrdemo calibrate`.")


def _torch_load(path: Path, missing: str) -> dict:
    if not path.is_file():
        raise RunError(missing)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise RunError(f"The model file of run {path.parent.name} is damaged or unsafe and was not loaded "
                       f"({exc.__class__.__name__}).") from None
    if not isinstance(raw, dict):
        raise RunError(f"The model file of run {path.parent.name} is not a cxrdemo model.")
    return raw


def from_dict(raw: dict, run: str = "?", check_records: bool = True) -> ModelFile:
    """Validate a loaded model.pt dict (format 1 or 2) and return its content; RunError names the first fault.

    check_records=False leaves the trust records unread: for the one step that replaces them (a damaged record
    must not stop `calibrate` from fitting it again)."""
    fmt = raw.get("format")
    if fmt not in (FORMAT, FORMAT_1):
        if isinstance(fmt, str) and fmt.startswith("cxrdemo-model/"):
            raise RunError(f"The model file of run {run} has format {fmt!r}, which this version of cxrdemo cannot "
                           "read: update cxrdemo or retrain the run.")
        raise RunError(f"The model file of run {run} is not a cxrdemo model.")
    check = _Checker(run)
    backbone = check.text(raw, "backbone")
    if backbone not in backbones.backbone_names():
        check.fail(f"its backbone {backbone!r} is not one this version knows")
    classes = check.classes(raw)
    head = check.text(raw, "head")
    if head not in HEADS:
        check.fail(f"its head {head!r} is not one of {', '.join(HEADS)}")
    dropout = check.number(raw, "dropout")
    if not 0 <= dropout < 1:
        check.fail(f"its dropout {dropout} is not in [0, 1)")
    config = raw.get("config", {})
    if not isinstance(config, dict):
        check.fail("its config is not a dictionary")
    if fmt == FORMAT_1:
        if check.integer(raw, "num_classes", 2, 10**4) != len(classes):
            check.fail(f"num_classes {raw['num_classes']} differs from its {len(classes)} class names")
        decision = _decision_1(check, raw, config)
        records = {}
    else:
        decision = check.decision(raw)
        records = {name: raw[name] for name in RECORD_NAMES if name in raw}
        if check_records:
            check.records(records, classes, backbone, raw)
    if decision.value is not None and len(classes) != 2:
        check.fail("it has a decision threshold but not two classes")
    return ModelFile(backbone=backbone, classes=classes, state_dict=check.state_dict(raw),
                     preprocessing=check.preprocessing(raw), decision=decision, head=head, dropout=dropout,
                     epoch=check.integer(raw, "epoch", 0, 10**6), val_loss=check.number(raw, "val_loss"),
                     train_path=check.text(raw, "train_path", ""), config=config, records=records,
                     population=check.population(raw))


def _head_width(state: Any) -> int | None:
    """How many pooled features the head takes (its first linear layer's inputs), when the weights say."""
    if not isinstance(state, dict):
        return None
    weights = sorted((k for k, v in state.items() if isinstance(k, str) and k.startswith("head.")
                      and k.endswith(".weight") and isinstance(v, torch.Tensor) and v.ndim == 2),
                     key=lambda k: int(k.split(".")[1]) if k.split(".")[1].isdigit() else 0)
    return int(state[weights[0]].shape[1]) if weights else None


def _decision_1(check: _Checker, raw: dict, config: dict) -> Decision:
    """Format 1: a threshold number beside the rule in the config; older runs saved a threshold only with 'val'."""
    value = raw.get("threshold")
    if value is None:
        return Decision()  # no threshold: the most probable class decided
    value = check.cut(value)
    rule = config.get("threshold")
    return Decision(rule if _is_rule(rule) and rule != "argmax" else "val", value)


def _is_rule(rule: Any) -> bool:
    """Whether `rule` is a decision rule TrainConfig accepts (argmax, val, spec:x, sens:x)."""
    try:
        TrainConfig(threshold=rule)
    except ConfigError:
        return False
    return True


class _Checker:
    """Field checks that fail with one sentence naming the run and the fault."""

    def __init__(self, run: str, what: str = "model file") -> None:
        self.run, self.what = run, what

    def fail(self, fault: str) -> NoReturn:
        raise RunError(f"The {self.what} of run {self.run} is damaged: {fault}.")

    def get(self, raw: dict, key: str, default: Any = ...) -> Any:
        if key not in raw:
            if default is ...:
                self.fail(f"it has no {key}")
            return default
        return raw[key]

    def text(self, raw: dict, key: str, default: Any = ...) -> str:
        value = self.get(raw, key, default)
        if not isinstance(value, str):
            self.fail(f"its {key} should be text, not {value!r:.40}")
        return value

    def number(self, raw: dict, key: str) -> float:
        value = self.get(raw, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(f"its {key} should be a number, not {value!r:.40}")
        return float(value)

    def integer(self, raw: dict, key: str, lo: int, hi: int) -> int:
        value = self.get(raw, key)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(f"its {key} should be a whole number from {lo} to {hi}, not {value!r:.40}")
        return value

    def cut(self, value: Any) -> float:
        # choose_threshold may return the float just above 1 (nextafter) when every score must stay below the cut
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1 + 1e-6:
            self.fail(f"its decision threshold should be a number between 0 and 1, not {value!r:.40}")
        return float(value)

    def classes(self, raw: dict) -> tuple[str, ...]:
        value = self.get(raw, "classes")
        if (not isinstance(value, (list, tuple)) or len(value) < 2 or len(set(value)) != len(value)
                or not all(isinstance(c, str) and c for c in value)):
            self.fail(f"its classes should be a list of two or more different names, not {value!r:.60}")
        return tuple(value)

    def decision(self, raw: dict) -> Decision:
        record = self.get(raw, "decision")
        if not isinstance(record, dict) or set(record) != {"rule", "value"}:
            self.fail("its decision should be a record {rule, value}")
        rule, value = record["rule"], record["value"]
        if not _is_rule(rule):
            self.fail(f"its decision rule {rule!r:.40} is not argmax, val, spec:x or sens:x")
        if (rule == "argmax") != (value is None):
            self.fail(f"its decision rule {rule} does not match its threshold {value!r:.40}")
        return Decision(rule, None if value is None else self.cut(value))

    def preprocessing(self, raw: dict) -> Preprocessing:
        record = self.get(raw, "preprocessing")
        if not isinstance(record, dict):
            self.fail("its preprocessing should be a record")
        lo, hi = IMG_SIZE_RANGE
        size = self.integer(record, "img_size", lo, hi)
        intensity = self.text(record, "intensity")
        if intensity not in INTENSITY_MODES:
            self.fail(f"its intensity step {intensity!r:.40} is not one of {', '.join(INTENSITY_MODES)}")
        mean, std = self.triple(record, "mean"), self.triple(record, "std")
        if min(std) <= 0:
            self.fail("its preprocessing std should be positive")
        resize = self.text(record, "resize")
        if resize != RESIZE:
            self.fail(f"its resize step {resize!r:.60} is not the one this version applies")
        # Files written before the policy was recorded were read by the same reader: they get today's policy.
        shrink = record.get("shrink", shrink_policy())
        if shrink != shrink_policy():
            self.fail(f"its shrink-on-read step {shrink!r:.80} is not the one this version's image reader applies")
        return Preprocessing(size, intensity, mean, std, resize, dict(shrink))

    def population(self, raw: dict) -> Population | None:
        if raw.get("population") is None:  # older files, and runs whose population was not stated
            return None
        try:
            return Population.from_record(raw["population"])
        except ConfigError as exc:
            self.fail(str(exc))

    def triple(self, record: dict, key: str) -> tuple[float, float, float]:
        value = self.get(record, key)
        if (not isinstance(value, (list, tuple)) or len(value) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in value)):
            self.fail(f"its preprocessing {key} should be 3 finite numbers, not {value!r:.60}")
        return tuple(float(v) for v in value)

    def records(self, records: dict, classes: tuple[str, ...], backbone: str, raw: dict) -> None:
        refit = f"; fit it again with `python -m cxrdemo calibrate --run {self.run}`"
        for name, record in records.items():
            try:
                trust_records.read(name, record, classes)
            except trust_records.RecordFault as fault:
                self.fail(f"its {name} record {fault}{refit}")
        if "domain" not in records:
            return
        layers, dim = records["domain"].get("layers", 1), records["domain"]["feature_dim"]
        stages = backbones.num_groups(backbone) - 1
        if layers > stages:
            self.fail(f"its domain record pools {layers} stages and a {backbone} has {stages}{refit}")
        width = _head_width(raw.get("state_dict"))
        if layers == 1 and width is not None and dim != width:
            self.fail(f"its domain record describes {dim} features and the network gives {width}{refit}")

    def state_dict(self, raw: dict) -> dict[str, torch.Tensor]:
        value = self.get(raw, "state_dict")
        if (not isinstance(value, dict) or not value
                or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())):
            self.fail("its weights (state_dict) should map names to tensors")
        return value
