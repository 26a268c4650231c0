"""The three trust records of a model file (calibration, conformal, domain), read back and checked field by field.

A record is data from a file: a temperature of 1e-300 makes every probability 100% "calibrated", a NaN cut-off
empties every set, a domain description of the wrong size or a declared 10^12-element tensor crashes (or fills the
memory of) the first prediction. So each reader checks every field before anything is computed from it, and says
what is wrong as a phrase ("its temperature should be ...") that follows "its <record> record": the checkpoint owner
makes it the one sentence of a damaged model file; Trust reads records through the same readers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from cxrdemo.errors import RunError
from cxrdemo.model import conformal, domain
from cxrdemo.model.calibration import B_BOUND, T_BOUNDS

NAMES = ("calibration", "conformal", "domain")
MAX_FEATURES = 8192  # widest pooled feature vector a registered backbone gives over its last stages, with room


class RecordFault(ValueError):
    """What is wrong with a record, as a phrase: 'its temperature should be ...'."""


def _number(d: dict, key: str, lo: float, hi: float, what: str = "") -> float:
    value = d.get(key)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not lo <= value <= hi):
        raise RecordFault(f"its {what or key} should be a number from {lo:g} to {hi:g}, not {value!r:.40}")
    return float(value)


def _whole(d: dict, key: str, lo: int, hi: int) -> int:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RecordFault(f"its {key} should be a whole number from {lo} to {hi}, not {value!r:.40}")
    return value


def read_calibration(d: Any, classes: tuple[str, ...]) -> tuple[float, tuple[float, ...]]:
    """(temperature, bias per class) of a calibration record: T within the fitter's bounds, |bias| within its bound."""
    if not isinstance(d, dict):
        raise RecordFault("is not a dictionary")
    lo, hi = T_BOUNDS
    t = _number(d, "temperature", lo * (1 - 1e-9), hi * (1 + 1e-9), "temperature") if "temperature" in d else 1.0
    bias = d.get("bias") or ()
    if (not isinstance(bias, (list, tuple)) or len(bias) not in (0, len(classes))
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b)
                       and abs(b) <= B_BOUND * (1 + 1e-9) for b in bias)):
        raise RecordFault(f"its bias should be {len(classes)} numbers from {-B_BOUND:g} to {B_BOUND:g}, "
                          f"not {bias!r:.40}")
    return t, tuple(float(b) for b in bias)


def read_conformal(d: Any, classes: tuple[str, ...]) -> dict[float, conformal.ConformalRecord]:
    """The prediction-set records by level: a level in [0.5, 1), a cut-off per class in [0, 1] (None: too few images)."""
    levels = d.get("levels") if isinstance(d, dict) else None
    if not isinstance(levels, (list, tuple)) or not all(isinstance(lv, dict) for lv in levels):
        raise RecordFault("should hold a list of levels, each a record")
    out = {}
    k = len(classes)
    for lv in levels:
        level = _number(lv, "level", 0.5, 0.999, "level")
        qhat, n = lv.get("qhat"), lv.get("n")
        if not isinstance(qhat, (list, tuple)) or len(qhat) != k or not all(
                q is None or (isinstance(q, (int, float)) and not isinstance(q, bool) and 0 <= q <= 1) for q in qhat):
            raise RecordFault(f"its cut-offs at {level:.0%} should be {k} numbers from 0 to 1, not {qhat!r:.60}")
        if not isinstance(n, (list, tuple)) or len(n) != k or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in n):
            raise RecordFault(f"its image counts at {level:.0%} should be {k} whole numbers, not {n!r:.60}")
        ok, reason, names = lv.get("ok"), lv.get("reason", ""), lv.get("classes", [])
        if not isinstance(ok, bool) or (ok and None in qhat) or not isinstance(reason, str):
            raise RecordFault(f"its record at {level:.0%} does not say consistently whether its sets can be used")
        if names and list(names) != list(classes):
            raise RecordFault(f"its classes at {level:.0%} are not the model's")
        out[level] = conformal.ConformalRecord(level, [None if q is None else float(q) for q in qhat], list(n), ok,
                                               reason, list(names))
    return out


def _finite(value: Any) -> torch.Tensor | None:
    """`value` as a contiguous float32 tensor when every number in it is finite, else None (its size is the
    caller's to check first: nothing larger than declared is converted)."""
    try:
        t = torch.as_tensor(np.asarray(value, dtype=np.float32)).contiguous()
    except (TypeError, ValueError, RuntimeError):
        return None
    return t if bool(torch.isfinite(t).all()) else None


def _matrix(d: dict, key: str, shape: tuple[int, int]) -> torch.Tensor:
    """A float32 tensor of exactly `shape`, its size checked before anything is converted or copied."""
    value = d.get(key)
    if isinstance(value, torch.Tensor):
        ok = tuple(value.shape) == shape
    elif isinstance(value, (list, tuple)):
        ok = len(value) == shape[0] and all(isinstance(r, (list, tuple)) and len(r) == shape[1] for r in value)
    else:
        ok = False
    t = _finite(value) if ok else None
    if t is None:
        raise RecordFault(f"its {key} should be a {shape[0]} x {shape[1]} table of finite numbers")
    return t


def read_domain(d: Any, classes: tuple[str, ...]) -> domain.AnyDomainRecord:
    """The in-domain description: sizes that fit the classes, finite numbers, tensors no larger than they declare."""
    if not isinstance(d, dict):
        raise RecordFault("is not a dictionary")
    if d.get("method") == domain.METHOD_STAGES:  # the measured per-stage alternative: its own reader checks it
        try:
            return domain.read_record(d)
        except (RunError, KeyError, TypeError, ValueError) as exc:
            raise RecordFault(f"its per-stage description is damaged ({exc.__class__.__name__})") from None
    if d.get("method") != domain.METHOD:
        raise RecordFault(f"its method {d.get('method')!r:.40} is not {domain.METHOD}")
    if d.get("transform", "none") not in domain.TRANSFORMS:
        raise RecordFault(f"its transform {d.get('transform')!r:.40} is not one of {', '.join(domain.TRANSFORMS)}")
    dim = _whole(d, "feature_dim", 1, MAX_FEATURES)
    layers = _whole(d, "layers", 1, 16) if "layers" in d else 1
    means = _matrix(d, "means", (len(classes), dim))
    factor = _matrix(d, "precision_factor", (dim, dim))
    return domain.DomainRecord(domain.METHOD, means, factor, _number(d, "cutoff", 0.0, 1e12),
                               _number(d, "quantile", 0.5, 1.0), _whole(d, "n_train", 0, 10**9),
                               _whole(d, "n_val", 1, 10**9), dim, layers,
                               _number(d, "shrinkage", 0.0, 1.0) if "shrinkage" in d else 0.0,
                               d.get("transform", "none"), _scores(d))


def _scores(d: dict) -> torch.Tensor | None:
    """The record's sorted validation scores (newer records keep them for the lessons' histogram), or None."""
    value = d.get("val_scores")
    if value is None:
        return None
    n = int(value.numel()) if isinstance(value, torch.Tensor) else len(value) if isinstance(value, (list, tuple)) else -1
    one_row = 0 < n <= domain.VAL_SCORES_KEPT and (not isinstance(value, torch.Tensor) or value.ndim == 1)
    t = _finite(value) if one_row else None
    if t is None or t.ndim != 1:
        raise RecordFault(f"its val_scores should be 1 to {domain.VAL_SCORES_KEPT} finite numbers")
    return t


READERS = {"calibration": read_calibration, "conformal": read_conformal, "domain": read_domain}


def read(name: str, record: Any, classes: tuple[str, ...]) -> Any:
    """The record `name` read by its reader; RecordFault says what is wrong."""
    return READERS[name](record, classes)
