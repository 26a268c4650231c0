"""Class-conditional (Mondrian) split-conformal prediction sets: "can't tell" as an honest answer.

Fitted on the validation split only. For each class k, qhat_k is a finite-sample-corrected quantile of the score
1 - p_k(x) over the validation images of class k; a new image's set holds every class k with 1 - p_k <= qhat_k.
If validation and new images are exchangeable, an image of class k is covered with probability >= level, for
every class separately (Vovk 2012; Sadinle, Lei & Wasserman 2019 for the score).

The set shown never contradicts the verdict (the label after the model's decision rule). Three repairs, each only
adding classes, so the shown set is a superset of the conformal set and coverage can only grow:
- the verdict is always added: a conformal set holding only another class becomes "both" (the model's rule and
  the conformal test disagree), so a set of one class is always the verdict;
- an empty conformal set (no class is typical enough of its own validation images at this level) becomes every
  class: "can't tell", not a confident {verdict}. These are the images between the two classes' cut-offs, the
  ones a clinician most needs to hear the model is unsure about;
- an image the in-domain check flags (unlike the training images: model/domain), or one that failed the quality
  gate (diagnosis/result passes that in), gets every class. The promise rests on the image being exchangeable
  with the validation images, which those checks say it is not: an adult film, a lateral view or a photograph must
  not read {PNEUMONIA} "at 90% coverage".
The second repair alone would break nesting across levels (at 90% the two cut-offs can leave a gap that reads
"both", while at 95% they overlap and the same image gets one class): a higher coverage would make the model look
surer. So the sets shown are nested by construction (nested_set_masks): the set at each level is the union of its
own repaired set and the set at every lower level. Every repair and the union only add classes, so the promise
(coverage >= level) still holds for the shown sets, and the set at 95% always holds the set at 90%.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from cxrdemo.errors import ConfigError

LEVELS = (0.90, 0.95)  # the coverages a user picks from; 0.90 is the default
DEFAULT_LEVEL = 0.90


@dataclass(frozen=True)
class ConformalRecord:
    """What a model file keeps to build prediction sets: per-class quantiles and whether they can be trusted."""

    level: float
    qhat: list[float | None]  # per class; None where the class has too few validation images
    n: list[int]  # validation images per class
    ok: bool
    reason: str = ""  # a sentence when not ok: which class lacks images, and how many it needs
    classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (for model.pt or a JSON file)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ConformalRecord:
        """The record saved by to_dict."""
        return cls(level=float(d["level"]), qhat=[None if q is None else float(q) for q in d["qhat"]],
                   n=[int(v) for v in d["n"]], ok=bool(d["ok"]), reason=str(d.get("reason", "")),
                   classes=[str(c) for c in d.get("classes", [])])


def min_images(level: float) -> int:
    """Validation images a class needs for a set at `level`: n with ceil((n + 1) * level) <= n (19 at 95%)."""
    return math.ceil(level / (1.0 - level) - 1e-9)


def _rank(n: int, level: float) -> int:
    """Which order statistic (1-based) of n scores is qhat: ceil((n + 1) * level), the finite-sample correction."""
    return math.ceil((n + 1) * level - 1e-9)  # 1e-9: (19 + 1) * 0.95 must give 19, not 19.000000000000004


def _check(probs: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ConfigError(f"Probabilities must be one row per image and one column per class; got {probs.shape}.")
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1 + 1e-6:
        raise ConfigError("Probabilities must be numbers between 0 and 1: the model output is damaged.")
    if labels is None:
        return probs, None
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (len(probs),):
        raise ConfigError(f"There are {len(probs)} rows of probabilities but {labels.size} labels: they must match.")
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ConfigError(f"Labels must be class indices 0..{probs.shape[1] - 1}.")
    return probs, labels


def fit_conformal(probs_val: np.ndarray, labels_val: np.ndarray, level: float = DEFAULT_LEVEL,
                  classes: list[str] | tuple[str, ...] | None = None) -> ConformalRecord:
    """Per-class conformal quantiles from validation probabilities (calibrated or not: use the same ones later)."""
    if not 0.0 < level < 1.0:
        raise ConfigError(f"A coverage level is a fraction between 0 and 1, e.g. 0.90; got {level}.")
    probs, labels = _check(probs_val, labels_val)
    k = probs.shape[1]
    names = list(classes) if classes is not None else [f"class {i}" for i in range(k)]
    if len(names) != k:
        raise ConfigError(f"{len(names)} class names for {k} columns of probabilities.")
    qhat: list[float | None] = []
    counts: list[int] = []
    short: list[str] = []
    for c in range(k):
        scores = np.sort(1.0 - probs[labels == c, c])
        n, r = len(scores), _rank(len(scores), level)
        counts.append(n)
        if r > n:  # the quantile would be +inf: every set would hold this class, a promise kept by saying nothing
            qhat.append(None)
            short.append(f"{names[c]} has {n}")
        else:
            qhat.append(float(scores[r - 1]))
    reason = ""
    if short:
        reason = (f"Too few validation images for a {level:.0%} prediction set: {', '.join(short)}; each class needs "
                  f"at least {min_images(level)}. No set is shown.")
    return ConformalRecord(level=float(level), qhat=qhat, n=counts, ok=not short, reason=reason, classes=list(names))


def conformal_masks(probs: np.ndarray, record: ConformalRecord) -> np.ndarray:
    """NxK booleans of the conformal sets themselves (1 - p_k <= qhat_k), before the repairs: what the promise
    is about, and what Compare measures when it says whether the promise held."""
    if not record.ok:
        raise ConfigError(record.reason or "This conformal record cannot build prediction sets.")
    probs, _ = _check(probs)
    if probs.shape[1] != len(record.qhat):
        raise ConfigError(f"The record has {len(record.qhat)} classes and the probabilities {probs.shape[1]}.")
    return (1.0 - probs) <= np.asarray(record.qhat, dtype=np.float64)[None, :]


def set_masks(probs: np.ndarray, record: ConformalRecord, verdicts: np.ndarray,
              outside: np.ndarray | None = None) -> np.ndarray:
    """NxK booleans of the sets shown: the conformal set plus the verdict; an empty one, or one of an image the
    in-domain check flags (`outside`, N booleans; None: no check), becomes every class."""
    mask = conformal_masks(probs, record)
    verdicts = np.asarray(verdicts).astype(np.int64).reshape(-1)
    if len(verdicts) != len(mask):
        raise ConfigError(f"There are {len(verdicts)} verdicts for {len(mask)} images: they must match.")
    mask[~mask.any(axis=1)] = True
    if outside is not None:
        outside = np.asarray(outside, dtype=bool).reshape(-1)
        if len(outside) != len(mask):
            raise ConfigError(f"There are {len(outside)} in-domain flags for {len(mask)} images: they must match.")
        mask[outside] = True
    mask[np.arange(len(probs)), verdicts] = True
    return mask


def nested_set_masks(probs: np.ndarray, records: dict[float, ConformalRecord], verdicts: np.ndarray,
                     outside: np.ndarray | None = None) -> dict[float, np.ndarray | None]:
    """Level -> NxK booleans of the sets shown at that level (None where the record is not ok), nested: each
    level's set is its own set_masks united with every lower level's, so a higher coverage never drops a class."""
    out: dict[float, np.ndarray | None] = {}
    below: np.ndarray | None = None
    for level in sorted(records):
        rec = records[level]
        if not rec.ok:
            out[level] = None
            continue
        mask = set_masks(probs, rec, verdicts, outside)
        below = mask if below is None else (mask | below)
        out[level] = below
    return out


def prediction_set(probs: np.ndarray, record: ConformalRecord, verdict: int,
                   outside: bool = False) -> tuple[int, ...] | None:
    """The class indices in one image's set (always holding `verdict`, never empty; every class when `outside`,
    i.e. the in-domain check flags the image); None when the record is not ok."""
    if not record.ok:
        return None  # the page shows record.reason instead of a set that would always be "both"
    mask = set_masks(np.asarray(probs, dtype=np.float64).reshape(1, -1), record, np.array([verdict]),
                     np.array([bool(outside)]))[0]
    return tuple(int(i) for i in np.flatnonzero(mask))


def _as_masks(sets: np.ndarray | list, k: int) -> np.ndarray:
    if isinstance(sets, np.ndarray) and sets.dtype == bool:
        return sets
    mask = np.zeros((len(sets), k), dtype=bool)
    for i, s in enumerate(sets):
        mask[i, list(s)] = True
    return mask


def _summary(mask: np.ndarray, labels: np.ndarray) -> dict:
    n = len(labels)
    if not n:
        return {"n": 0, "coverage": float("nan"), "mean_size": float("nan"), "share_both": float("nan")}
    size = mask.sum(axis=1)
    return {"n": int(n), "coverage": float(mask[np.arange(n), labels].mean()), "mean_size": float(size.mean()),
            "share_both": float((size > 1).mean())}


def coverage_report(sets: np.ndarray | list, labels: np.ndarray, level: float,
                    classes: list[str] | tuple[str, ...] | None = None) -> dict:
    """Promised coverage, coverage reached, mean set size and share of sets with more than one class, overall and
    per true class (the guarantee is per class, so a class that falls short shows here)."""
    labels = np.asarray(labels).astype(np.int64)
    k = len(classes) if classes is not None else int(
        sets.shape[1] if isinstance(sets, np.ndarray) and sets.ndim == 2 else labels.max(initial=0) + 1)
    mask = _as_masks(sets, k)
    if mask.shape != (len(labels), k):
        raise ConfigError(f"{mask.shape[0]} prediction sets over {mask.shape[1]} classes for {len(labels)} labels "
                          f"and {k} classes: they must match.")
    names = list(classes) if classes is not None else [f"class {i}" for i in range(k)]
    out = {"level": float(level), **_summary(mask, labels)}
    out["per_class"] = {names[c]: _summary(mask[labels == c], labels[labels == c]) for c in range(k)}
    return out
