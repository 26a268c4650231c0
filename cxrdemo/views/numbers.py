"""Every number a page, the model card, a lesson, a plot, the CLI or an export shows, written one way.

One precision per kind: a probability or a proportion (accuracy, sensitivity, specificity, coverage...) is a
percentage with one decimal ("75.0%"; exactly 0 or 1 read "0%" and "100%"), a score (AUROC, ECE) has three decimals
("0.960"), a difference of proportions is in percentage points with a sign ("+3.1 points"). A missing value is
"—", never "None" or "nan". Intervals are computed once, in model/metrics (metric_intervals); this module words them.
"""

from __future__ import annotations

import math
from numbers import Real

import pandas as pd

from cxrdemo.model.metrics import Estimate

MISSING = "—"
DASH = "–"  # between the bounds of an interval
MINUS = "\u2212"
PERCENT_DIGITS = 1
SCORE_DIGITS = 3
LOSS_DIGITS = 4  # a loss moves in the third decimal from one epoch to the next late in training
CSV_DIGITS = 4  # floats in a downloaded table: 0.7, not 0.6999999999999999
# Metrics that are scores on their own scale (not shares of images): written as 0.960, not 96.0%.
SCORES = frozenset({"auroc", "ece", "ece_before", "ece_after", "loss", "val_loss", "train_loss", "brier"})
LABELS = {"accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity", "auroc": "AUROC",
          "micro_recall": "micro-recall", "ece": "ECE"}


def missing(v: object) -> bool:
    """True for None, NaN, pandas' NA and anything that is not a real number."""
    if v is None or v is pd.NA or isinstance(v, bool) or not isinstance(v, Real):
        return True
    return math.isnan(float(v))


def _percent_digits(v: float, digits: int) -> str:
    if v in (0.0, 1.0):  # exactly none or all: "100%", not "100.0%"
        return f"{100 * v:.0f}"
    return f"{100 * v:.{digits}f}"


def percent(v: object, digits: int = PERCENT_DIGITS) -> str:
    """A probability or a proportion: '75.0%', '100%', '—' when missing."""
    return MISSING if missing(v) else _percent_digits(float(v), digits) + "%"


def level(v: object) -> str:
    """A level someone chose (a coverage, a target): '90%', '97.5%'; '—' when missing."""
    return MISSING if missing(v) else f"{100 * float(v):g}%"


def score(v: object, digits: int = SCORE_DIGITS) -> str:
    """A score on its own scale (AUROC, ECE): '0.960'; '—' when missing."""
    return MISSING if missing(v) else f"{float(v) + 0.0:.{digits}f}"


def is_score(key: str) -> bool:
    """True for metrics written as scores (AUROC, ECE, losses), False for proportions written as percentages."""
    return str(key).removeprefix("test_").removeprefix("best_") in SCORES or "auroc" in str(key)


def metric(key: str, v: object) -> str:
    """A metric by its name: a loss with 4 decimals, a score (AUROC, ECE) with 3, else a percentage."""
    if "loss" in str(key):
        return score(v, LOSS_DIGITS)
    return score(v) if is_score(key) else percent(v)


def interval(key: str, low: object, high: object) -> str:
    """The bounds of a 95% interval: '66.0–83.0%' or '0.929–0.984'; '' when either is missing."""
    if missing(low) or missing(high):
        return ""
    if is_score(key):
        return f"{score(low)}{DASH}{score(high)}"
    return f"{_percent_digits(float(low), PERCENT_DIGITS)}{DASH}{percent(high)}"


def with_interval(key: str, value: object, bounds: tuple | list | None) -> str:
    """'75.0% (66.0–83.0%)' or '0.960 (0.929–0.984)'; the value alone without bounds; '—' when missing."""
    if missing(value):
        return MISSING
    shown = interval(key, *bounds) if bounds is not None and len(bounds) == 2 else ""
    return metric(key, value) + (f" ({shown})" if shown else "")


def estimate(e: Estimate | None, classes: list[str] | tuple[str, ...] = ("NORMAL", "PNEUMONIA")) -> str:
    """A metric with its interval as a table cell; a proportion of 0 or 1 as the sentence a clinician believes.

    'all 120 NORMAL films called NORMAL; 95% interval 97.0–100%' rather than '100% (100–100%)'."""
    if e is None:
        return MISSING
    if e.exact and e.k is not None and e.n:
        return f"{count_words(e, classes)}; 95% interval {interval(e.key, e.low, e.high)}"
    return with_interval(e.key, e.value, (e.low, e.high))


def count_words(e: Estimate, classes: list[str] | tuple[str, ...] = ("NORMAL", "PNEUMONIA")) -> str:
    """The count behind a proportion in words: 'all 120 NORMAL films called NORMAL', '57 of 60 films right'."""
    k, n = int(e.k or 0), int(e.n or 0)
    neg, pos = (str(classes[0]), str(classes[1])) if len(classes) == 2 else ("", "")
    how_many = "all" if k == n else "none of the" if k == 0 else f"{k} of"
    noun = "film" if n == 1 else "films"
    if e.key == "specificity":
        return f"{how_many} {n} {neg} {noun} called {neg}"
    if e.key == "sensitivity":
        return f"{how_many} {n} {pos} {noun} called {pos}"
    return f"{how_many} {n} {noun} called right"


def points(d: object) -> str:
    """A difference of two proportions: '+3.1 points', '−0.4 points'; '—' when missing."""
    if missing(d):
        return MISSING
    return f"{100 * float(d) + 0.0:+.{PERCENT_DIGITS}f}".replace("-", MINUS) + " points"


def difference(key: str, d: object) -> str:
    """A signed difference of a metric: percentage points for proportions, '+0.012' for scores."""
    if missing(d):
        return MISSING
    if is_score(key):
        return f"{float(d) + 0.0:+.{SCORE_DIGITS}f}".replace("-", MINUS)
    return points(d)


def difference_interval(key: str, low: object, high: object) -> str:
    """'95% interval −2.0 to +6.1 points' (or '−0.010 to +0.031' for scores)."""
    lo, hi = difference(key, low), difference(key, high)
    unit = "" if is_score(key) else " points"
    return f"95% interval {lo.removesuffix(' points')} to {hi.removesuffix(' points')}{unit}"


def seconds(v: object) -> str:
    """A duration in seconds: '6.5 s'; '—' when missing."""
    return MISSING if missing(v) else f"{float(v):.1f} s"


def d3(key: str) -> str:
    """The plotly (d3) format of a metric in a hover or tick label, matching `metric`: '.1%' or '.3f'."""
    if "loss" in str(key):
        return f".{LOSS_DIGITS}f"
    return f".{SCORE_DIGITS}f" if is_score(key) else f".{PERCENT_DIGITS}%"


def _absent(v: object) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v))


def cell(v: object, kind: str = "plain") -> str:
    """A table cell: kind 'percent' | 'points' | 'score' | 'count' | 'seconds' | 'plain' (text as it is); '—' for
    anything missing."""
    if _absent(v):
        return MISSING
    if kind == "percent":
        return percent(v)
    if kind == "score":
        return score(v)
    if kind == "points":
        return points(v)
    if kind == "count":
        return MISSING if missing(v) else f"{int(round(float(v))):,}"
    if kind == "seconds":
        return seconds(v)
    return str(v)


def shown_table(df: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    """A copy of `df` for the eye: each named column written by `cell` (one precision per kind), the rest as is,
    and no cell reads 'None' or 'nan'."""
    out = df.copy()
    for col in out.columns:
        kind = kinds.get(col)
        if kind is not None:
            out[col] = [cell(v, kind) for v in out[col]]
        elif not pd.api.types.is_numeric_dtype(out[col]) and not pd.api.types.is_datetime64_any_dtype(out[col]):
            out[col] = [MISSING if _absent(v) else v for v in out[col]]
    return out


def rounded(df: pd.DataFrame, digits: int = CSV_DIGITS) -> pd.DataFrame:
    """A copy of `df` with every float rounded to `digits` decimals (for CSV downloads)."""
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].round(digits)
        elif out[col].dtype == object:
            out[col] = [round(v, digits) if isinstance(v, float) else v for v in out[col]]
    return out
