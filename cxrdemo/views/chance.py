"""Is a finished run any better than chance? One rule, worded once, for the job card, Compare and Diagnosis.

At chance: every test image gets the same class, or the 95% interval of the test AUROC includes 0.5.
"""

from __future__ import annotations

import math

from cxrdemo.views import numbers


def _auroc_interval(test: dict) -> tuple[float, float] | None:
    """The recorded 95% AUROC interval, else Hanley & McNeil's (1982) normal interval from the class counts."""
    nested = test.get("ci") if isinstance(test.get("ci"), dict) else {}
    ci = test.get("auroc_ci") or nested.get("auroc")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        try:
            return float(ci[0]), float(ci[1])
        except (TypeError, ValueError):
            pass
    try:
        a = float(test.get("auroc"))
    except (TypeError, ValueError):
        return None
    confusion = test.get("confusion") or []
    if not math.isfinite(a) or len(confusion) != 2:
        return None
    n_neg, n_pos = (sum(int(v) for v in row) for row in confusion)
    if not n_neg or not n_pos:
        return None
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    half = 1.96 * math.sqrt(max(var, 0.0))
    return max(0.0, a - half), min(1.0, a + half)


def single_class(test: dict) -> str | None:
    """The class given to every test image, or None when the predictions differ (or are unknown)."""
    confusion, classes = test.get("confusion") or [], test.get("classes") or []
    if not confusion or len(classes) != len(confusion):
        return None
    predicted = [sum(int(row[j]) for row in confusion) for j in range(len(classes))]
    used = [c for c, n in zip(classes, predicted) if n]
    return str(used[0]) if len(used) == 1 and sum(predicted) > 1 else None


def chance_sentence(test: dict | None) -> str | None:
    """'predicts PNEUMONIA for every test image: no better than chance', an AUROC sentence, or None (better)."""
    if not test:
        return None
    only = single_class(test)
    if only:
        return f"predicts {only} for every test image: no better than chance"
    interval = _auroc_interval(test)
    if interval and interval[0] <= 0.5 <= interval[1]:
        return (f"test AUROC {numbers.with_interval('auroc', float(test['auroc']), interval)} "
                "includes 0.5: no better than chance")
    return None
