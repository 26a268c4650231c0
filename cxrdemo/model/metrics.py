"""Classification metrics from labels and probabilities: accuracy, macro P/R/F1, micro-recall, AUROC, confusion."""

from __future__ import annotations

import numpy as np

from cxrdemo.config import DecisionRule


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def binary_auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney) statistic, ties averaged; NaN with one class."""
    y_true = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = np.asarray(score)[order]
    # average ranks over ties
    i = 0
    while i < len(sorted_scores):
        j = i
        while j + 1 < len(sorted_scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), thresholds decreasing, starting at +inf."""
    y_true = np.asarray(y_true).astype(bool)
    order = np.argsort(-np.asarray(score), kind="mergesort")
    s, y = np.asarray(score)[order], y_true[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps, fps = np.cumsum(y)[distinct], np.cumsum(~y)[distinct]
    tpr = np.r_[0, tps] / max(1, y.sum())
    fpr = np.r_[0, fps] / max(1, (~y).sum())
    return fpr, tpr, np.r_[np.inf, s[distinct]]


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
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = cm.sum(1) > 0
    if k == 2:
        auroc = binary_auroc(y_true == 1, probs[:, 1])
    else:
        aucs = [binary_auroc(y_true == c, probs[:, c]) for c in range(k) if present[c]]
        aucs = [a for a in aucs if not np.isnan(a)]
        auroc = float(np.mean(aucs)) if aucs else float("nan")
    n = int(len(y_true))
    out = {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "precision": float(precision[present].mean()) if present.any() else float("nan"),
        "recall": float(recall[present].mean()) if present.any() else float("nan"),
        "f1": float(f1[present].mean()) if present.any() else float("nan"),
        "micro_recall": float(tp.sum() / n) if n else float("nan"),
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
    """95% percentile bootstrap intervals of some metrics (resampling images)."""
    rng = np.random.default_rng(seed)
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(n_boot):
        idx = rng.integers(0, len(y_true), len(y_true))
        m = classification_metrics(y_true[idx], probs[idx], classes, threshold)
        for k in keys:
            if k in m and not np.isnan(m[k]):
                samples[k].append(m[k])
    return {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for k, v in samples.items() if v}
