"""Classification metrics from labels and probabilities: accuracy, macro P/R/F1, micro-recall, AUROC, confusion.

scikit-learn computes the metrics and SciPy the bootstrap percentiles: well-kept, tested implementations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sklearn.metrics as skm
from scipy import stats

from cxrdemo.config import DecisionRule

N_BOOT = 2000  # bootstrap resamples of the images behind every metric interval (model card, lessons)
INTERVAL_KEYS = ("accuracy", "sensitivity", "specificity", "auroc")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    return skm.confusion_matrix(np.asarray(y_true, int), np.asarray(y_pred, int), labels=np.arange(num_classes))


def _one_class(y_true: np.ndarray) -> bool:
    return bool(y_true.all() or not y_true.any())


def binary_auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN with one class or a score that is not a number."""
    y_true, score = np.asarray(y_true).astype(bool), np.asarray(score, dtype=np.float64)
    if _one_class(y_true) or not np.isfinite(score).all():
        return float("nan")
    return float(skm.roc_auc_score(y_true, score))


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), thresholds decreasing, starting at +inf.

    Every distinct score is a threshold (drop_intermediate=False): the decision rules cut between neighbours.
    """
    y_true, score = np.asarray(y_true).astype(bool), np.asarray(score, dtype=np.float64)
    if _one_class(y_true):
        # scikit-learn leaves the rate of the missing class undefined (NaN, with a warning); it is 0 here, as before
        thresholds = np.r_[np.inf, np.unique(score)[::-1]]
        at_or_above = (score[None, :] >= thresholds[:, None]).sum(1) / max(1, len(score))
        zero = np.zeros(len(thresholds))
        return (zero, at_or_above, thresholds) if y_true.all() else (at_or_above, zero, thresholds)
    return skm.roc_curve(y_true, score, drop_intermediate=False)


def predict_labels(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Argmax, or for two classes `p(class 1) >= threshold` when a threshold was chosen."""
    probs = np.asarray(probs)
    if threshold is not None and probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(axis=1)


def choose_threshold(y_true: np.ndarray, probs: np.ndarray, rule: DecisionRule | str = "val") -> float:
    """The p(class 1) cut chosen on held-out data by `rule` (see config.THRESHOLDS); midpoints between scores.

    'val' maximises balanced accuracy (Youden's J). 'spec:x' is the lowest cut that keeps a specificity of at
    least x, 'sens:x' the highest that keeps a sensitivity of at least x: fixed operating points, which move less
    than Youden's cut when a confident model meets another site's images (its scores spread, the margin stays).
    """
    score = np.asarray(probs)[:, 1]
    y = np.asarray(y_true).astype(bool)
    rule = DecisionRule.parse(rule)
    if rule.kind == "val":
        fpr, tpr, thr = roc_curve(y, score)
        best = int(np.argmax((tpr - fpr)[1:])) + 1  # skip the +inf point
        # put the cut between this score and the next lower one, so nearby unseen scores fall on the same side
        lower = thr[best + 1] if best + 1 < len(thr) else 0.0
        return float((thr[best] + lower) / 2)
    kind, target = rule.kind, rule.target
    group = np.sort(score[~y] if kind == "spec" else score[y])
    if not len(group):
        raise ValueError(f"threshold rule {str(rule)!r} needs validation images of both classes")
    k = max(1, int(np.ceil(float(target) * len(group) - 1e-9)))  # images that must stay on their side
    distinct = np.unique(score)
    if kind == "spec":  # the k lowest normal scores fall below the cut
        edge = group[k - 1]
        above = distinct[distinct > edge]
        return float((edge + above[0]) / 2) if len(above) else float(np.nextafter(edge, np.inf))
    edge = group[len(group) - k]  # the k highest positive scores stay at or above the cut
    below = distinct[distinct < edge]
    return float((edge + below[-1]) / 2) if len(below) else float(edge)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str] | tuple[str, ...],
                           threshold: float | None = None) -> dict:
    """Accuracy, macro precision/recall/F1, micro-recall, AUROC (one-vs-rest beyond 2 classes), confusion, sens/spec."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    y_pred = predict_labels(probs, threshold)
    n, labels = int(len(y_true)), np.arange(k)
    if not n:  # an empty split: every rate is undefined (NaN below), not an error
        cm, precision, recall, f1 = np.zeros((k, k), np.int64), *np.zeros((3, k))
    else:
        cm = confusion_matrix(y_true, y_pred, k)
        # a class nobody predicted has precision 0 and one absent from the truth recall 0; averages skip the absent
        precision, recall, f1, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None,
                                                                       zero_division=0.0)
    present = cm.sum(1) > 0
    if k == 2:
        auroc = binary_auroc(y_true == 1, probs[:, 1])
    else:
        aucs = [binary_auroc(y_true == c, probs[:, c]) for c in labels[present]]
        aucs = [a for a in aucs if not np.isnan(a)]
        auroc = float(np.mean(aucs)) if aucs else float("nan")
    out = {
        "n": n,
        "accuracy": float(skm.accuracy_score(y_true, y_pred)) if n else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "precision": float(precision[present].mean()) if present.any() else float("nan"),
        "recall": float(recall[present].mean()) if present.any() else float("nan"),
        "f1": float(f1[present].mean()) if present.any() else float("nan"),
        "micro_recall": float(np.trace(cm) / n) if n else float("nan"),
        "auroc": auroc,
        "per_class_recall": {c: float(r) for c, r in zip(classes, recall)},
        "confusion": cm.tolist(),
        "classes": list(classes),
    }
    if k == 2:
        # class 1 is the finding (PNEUMONIA after NORMAL in name order): sensitivity and specificity
        out["sensitivity"], out["specificity"] = float(recall[1]), float(recall[0])
    return out


def bootstrap_ci(y_true: np.ndarray, probs: np.ndarray, classes, threshold: float | None = None,
                 keys=("accuracy", "sensitivity", "specificity", "auroc"), n_boot: int = 1000,
                 seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% percentile bootstrap intervals of some metrics (resampling images); a metric never defined is left out.

    A resample that cannot define a metric (AUROC when it drew images of one class only) is left out of that metric's
    interval. scipy.stats.bootstrap cannot leave such resamples out (it returns NaN and warns), so the resamples are
    drawn here, as it draws them, every metric is computed for all of them at once (`resampled_metrics`: the same
    numbers as `classification_metrics` per resample, about 80 times faster), and scipy.stats.quantile omits the
    undefined values.
    """
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    if not len(y_true):
        return {}
    resamples = np.random.default_rng(seed).integers(0, len(y_true), (n_boot, len(y_true)))
    draws = resampled_metrics(y_true, probs, len(classes), threshold, resamples)
    out = {}
    for k in keys:
        v = draws.get(k)
        if v is not None and not np.isnan(v).all():
            lo, hi = stats.quantile(v, [0.025, 0.975], method="linear", nan_policy="omit")
            out[k] = (float(lo), float(hi))
    return out


# rows of resamples handled at once: bounds the (rows, images) arrays to about 8 MB each
_CHUNK_CELLS = 1_000_000


def resampled_metrics(y_true: np.ndarray, probs: np.ndarray, num_classes: int, threshold: float | None,
                      resamples: np.ndarray) -> dict[str, np.ndarray]:
    """The scalar metrics of `classification_metrics` for each row of `resamples` (image indices), NaN if undefined."""
    y_true, probs = np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    pred = predict_labels(probs, threshold)  # a prediction depends on its own image only: resample it, don't redo it
    rows = max(1, _CHUNK_CELLS // max(1, resamples.shape[1]))
    parts = [_metrics_of_draws(y_true[idx], pred[idx], probs, idx, num_classes)
             for idx in np.array_split(resamples, range(rows, len(resamples), rows))]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _metrics_of_draws(y: np.ndarray, pred: np.ndarray, probs: np.ndarray, idx: np.ndarray, k: int) -> dict:
    n_boot, n = y.shape
    offsets = np.arange(n_boot)[:, None] * (k * k)
    cm = np.bincount((offsets + y * k + pred).ravel(), minlength=n_boot * k * k).reshape(n_boot, k, k)
    tp, truth, predicted = np.diagonal(cm, axis1=1, axis2=2), cm.sum(2), cm.sum(1)
    # as precision_recall_fscore_support(zero_division=0): a rate with nothing to divide by is 0
    recall = tp / np.maximum(truth, 1)
    precision = tp / np.maximum(predicted, 1)
    f1 = 2 * tp / np.maximum(truth + predicted, 1)
    present = truth > 0  # averages skip classes absent from the truth; n > 0, so one is always present
    n_present = present.sum(1)
    out = {"n": np.full(n_boot, float(n)), "accuracy": tp.sum(1) / n, "micro_recall": tp.sum(1) / n,
           "balanced_accuracy": (recall * present).sum(1) / n_present,
           "precision": (precision * present).sum(1) / n_present,
           "recall": (recall * present).sum(1) / n_present, "f1": (f1 * present).sum(1) / n_present}
    if k == 2:
        out["auroc"] = _resampled_auroc(y == 1, probs[:, 1], idx)
        out["sensitivity"], out["specificity"] = recall[:, 1], recall[:, 0]
    else:  # one-vs-rest macro over the classes whose AUROC is defined in that resample
        aucs = np.stack([_resampled_auroc(y == c, probs[:, c], idx) for c in range(k)], axis=1)
        defined = ~np.isnan(aucs)
        count = defined.sum(1)
        out["auroc"] = np.where(count > 0, np.where(defined, aucs, 0).sum(1) / np.maximum(count, 1), np.nan)
    return out


def _resampled_auroc(positive: np.ndarray, score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """binary_auroc of each resample: the Mann-Whitney U of average ranks (ties count half), as roc_auc_score."""
    finite = np.isfinite(score)
    drawn = np.where(finite, score, 0.0)[idx]
    n_pos = positive.sum(1)
    n_neg = positive.shape[1] - n_pos
    rank_sum = np.where(positive, stats.rankdata(drawn, axis=1), 0.0).sum(1)
    auc = (rank_sum - n_pos * (n_pos + 1) / 2) / np.maximum(n_pos * n_neg, 1)
    return np.where((n_pos > 0) & (n_neg > 0) & finite[idx].all(1), auc, np.nan)


# ---------------------------------------------------------------- a metric with its interval

@dataclass(frozen=True)
class Estimate:
    """A metric on a set of images with its 95% interval; a proportion also carries the count it is made of.

    method is "bootstrap" (percentile interval, images resampled) or "exact" (Clopper-Pearson on k of n: used where
    the bootstrap cannot speak, a proportion of 0 or 1 or a collapsed interval)."""

    key: str
    value: float
    low: float
    high: float
    method: str
    k: int | None = None  # images counted (proportions only): right, or positives found, or normals called normal
    n: int | None = None  # images the proportion is of

    @property
    def exact(self) -> bool:
        """True when the interval is Clopper-Pearson's on the count, not the bootstrap's."""
        return self.method == "exact"


def exact_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a proportion k/n (scipy's exact binomial); (nan, nan) when n is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def proportion_counts(confusion: list | np.ndarray) -> dict[str, tuple[int, int]]:
    """(k, n) behind each proportion metric of a confusion matrix: accuracy, and for two classes sens/spec."""
    cm = np.asarray(confusion, dtype=np.int64)
    out = {"accuracy": (int(np.trace(cm)), int(cm.sum())), "micro_recall": (int(np.trace(cm)), int(cm.sum()))}
    if cm.shape == (2, 2):
        out["sensitivity"] = (int(cm[1, 1]), int(cm[1].sum()))
        out["specificity"] = (int(cm[0, 0]), int(cm[0].sum()))
    return out


def metric_intervals(y_true: np.ndarray, probs: np.ndarray, classes, threshold: float | None = None,
                     keys=INTERVAL_KEYS, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Estimate]:
    """Each metric of `keys` with its 95% interval: the one computation behind every interval the app shows
    (bootstrap percentiles, exact where the bootstrap cannot speak: see `estimates`)."""
    y_true, probs = np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    if not len(y_true):
        return {}
    m = classification_metrics(y_true, probs, classes, threshold)
    boot = bootstrap_ci(y_true, probs, classes, threshold, keys=keys, n_boot=n_boot, seed=seed)
    return estimates({k: m.get(k) for k in keys}, boot, m["confusion"])


def estimates(values: dict, bounds: dict, confusion=None) -> dict[str, Estimate]:
    """Metric values and their bootstrap bounds (as stored in test or evaluation files) as Estimates.

    A proportion of 0 or 1, or a bootstrap interval collapsed to a point (resampling cannot vary the answer: every
    resample of 120 normals all called normal says 100%), gets the exact binomial interval of its count instead,
    when the confusion matrix gives the count."""
    counts = proportion_counts(confusion) if confusion is not None and len(confusion) else {}
    out = {}
    for key, value in values.items():
        if not isinstance(value, (int, float)) or np.isnan(value):
            continue
        k, n = counts.get(key, (None, None))
        lo, hi = (list(bounds.get(key) or []) + [float("nan")] * 2)[:2]
        if n and (k in (0, n) or not lo < hi):
            out[key] = Estimate(key, float(value), *exact_interval(k, n), "exact", k, n)
        else:
            out[key] = Estimate(key, float(value), float(lo), float(hi), "bootstrap", k, n)
    return out
