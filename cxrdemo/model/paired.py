"""Is the difference between two runs real? Paired bootstrap intervals on the same test images.

Both runs are scored on every resampled set of images (paired), so the image-to-image variation they share
cancels out. Each class is resampled within itself (scipy.stats.bootstrap with one sample per class), so every
resample holds both classes and defines an AUROC; the interval is the percentile interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from cxrdemo.errors import RunError
from cxrdemo.model.metrics import N_BOOT
from cxrdemo.model.predictions import Predictions


@dataclass(frozen=True)
class Difference:
    """B minus A for one metric, with its 95% interval."""

    metric: str  # "auroc" | "accuracy"
    a: float
    b: float
    low: float
    high: float

    @property
    def delta(self) -> float:
        """B minus A."""
        return self.b - self.a

    @property
    def could_be_chance(self) -> bool:
        """True when the interval includes no difference at all."""
        return self.low <= 0.0 <= self.high


@dataclass(frozen=True)
class Comparison:
    """The paired comparison of run B against run A on the images both were tested on."""

    n: int  # images matched
    unmatched: int  # images only one of the runs was tested on
    differences: tuple[Difference, ...]


def _auroc(y: np.ndarray, probs: np.ndarray) -> float:
    """Area under the ROC curve by ranks (ties count half); one-vs-rest mean over the classes present."""
    k = probs.shape[1]
    targets = [1] if k == 2 else [c for c in range(k) if (y == c).any()]
    out = []
    for c in targets:
        pos = y == c
        n1, n0 = int(pos.sum()), int((~pos).sum())
        if not n1 or not n0:
            continue
        ranks = stats.rankdata(probs[:, c])
        out.append((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    return float(np.mean(out)) if out else float("nan")


class NotPairable(RunError):
    """Two runs whose results cannot be paired (other classes, no test image in common): information, not a fault."""


def match(a: Predictions, b: Predictions) -> tuple[np.ndarray, np.ndarray, int]:
    """Row indices of the images both runs saw (same relative path and content hash), and how many did not match."""
    if a.classes != b.classes:
        raise NotPairable(f"The two runs tell different classes apart ({', '.join(a.classes)} vs "
                       f"{', '.join(b.classes)}): their results cannot be paired.")
    where_b = {key: j for j, key in enumerate(b.keys)}
    pairs = [(i, where_b[key]) for i, key in enumerate(a.keys) if key in where_b]
    if not pairs:
        raise NotPairable("The two runs were tested on different images (no file name and content in common): "
                       "evaluate both on the same test set first.")
    ia, ib = (np.array(x, dtype=np.int64) for x in zip(*pairs))
    if not np.array_equal(a.y_true[ia], b.y_true[ib]):
        raise RunError("The same test image carries a different true class in the two runs: check the datasets.")
    return ia, ib, len(a.keys) + len(b.keys) - 2 * len(pairs)


def compare(a: Predictions, b: Predictions, n_resamples: int = 2000, seed: int = 0) -> Comparison:
    """Paired bootstrap 95% intervals of B minus A in AUROC and in accuracy on the images both runs saw."""
    ia, ib, unmatched = match(a, b)
    y, pa, pb = a.y_true[ia], a.probs[ia], b.probs[ib]
    ok_a, ok_b = (a.y_pred[ia] == y).astype(float), (b.y_pred[ib] == y).astype(float)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    if len(by_class) < 2:
        raise RunError("The shared test images are all of one class: AUROC is not defined on them.")

    def auroc_diff(*groups: np.ndarray) -> float:
        idx = np.concatenate(groups)
        return _auroc(y[idx], pb[idx]) - _auroc(y[idx], pa[idx])

    def accuracy_diff(*groups: np.ndarray) -> float:
        idx = np.concatenate(groups)
        return float(ok_b[idx].mean() - ok_a[idx].mean())

    out = []
    for name, stat, value_a, value_b in (("auroc", auroc_diff, _auroc(y, pa), _auroc(y, pb)),
                                         ("accuracy", accuracy_diff, ok_a.mean(), ok_b.mean())):
        res = stats.bootstrap(tuple(by_class), stat, n_resamples=n_resamples, vectorized=False, paired=False,
                              method="percentile", confidence_level=0.95, rng=np.random.default_rng(seed))
        lo, hi = res.confidence_interval
        out.append(Difference(name, float(value_a), float(value_b), float(lo), float(hi)))
    return Comparison(len(y), unmatched, tuple(out))


# ---------------------------------------------------------------- accuracy gaps of the lessons

def paired_gap(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Accuracy of A minus accuracy of B on the same images, with a 95% paired bootstrap interval."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (N_BOOT, len(a)))
    lo, hi = np.percentile(a[idx].mean(1) - b[idx].mean(1), [2.5, 97.5])
    return float(a.mean() - b.mean()), float(lo), float(hi)


def leakage_gap(pairs: list[tuple[float, int, np.ndarray]], seed: int = 0) -> tuple[float, float, float]:
    """Mean (validation accuracy - accuracy on unseen patients) over runs, with a 95% bootstrap interval.

    pairs: (validation accuracy, validation images, per-image correctness on the test). Validation is
    resampled as binomial draws (its per-image results are not stored), the test images with replacement.
    """
    rng = np.random.default_rng(seed)
    point = float(np.mean([v - c.mean() for v, _, c in pairs]))
    draws = np.zeros(N_BOOT)
    for v, n, c in pairs:
        val = rng.binomial(n, v, N_BOOT) / max(1, n)
        test = c[rng.integers(0, len(c), (N_BOOT, len(c)))].mean(1)
        draws += (val - test) / len(pairs)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return point, float(lo), float(hi)


def _draw_aurocs(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of each resample (rows: draws of positive and negative scores), ties counting half."""
    above = (pos[:, :, None] > neg[:, None, :]).mean((1, 2))
    ties = (pos[:, :, None] == neg[:, None, :]).mean((1, 2))
    return above + 0.5 * ties


def auroc_gap(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """AUROC of A minus AUROC of B on the same images (binary: the positive class's score), with a 95% paired
    bootstrap interval: each class resampled within itself, both runs scored on the same draws (as `compare`)."""
    y = np.asarray(y).astype(bool)
    a, b = np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ip, ineg = np.flatnonzero(y), np.flatnonzero(~y)
    dp, dn = ip[rng.integers(0, len(ip), (N_BOOT, len(ip)))], ineg[rng.integers(0, len(ineg), (N_BOOT, len(ineg)))]
    draws = _draw_aurocs(a[dp], a[dn]) - _draw_aurocs(b[dp], b[dn])
    point = _draw_aurocs(a[ip][None], a[ineg][None])[0] - _draw_aurocs(b[ip][None], b[ineg][None])[0]
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(point), float(lo), float(hi)
