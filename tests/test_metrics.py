"""Metrics agree with scikit-learn and with hand-computed cases."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from cxrdemo.model import metrics


def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    probs = np.c_[1 - p1, p1]
    m = metrics.classification_metrics(y, probs, ("NORMAL", "PNEUMONIA"))
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["precision"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert m["recall"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["micro_recall"] == pytest.approx(recall_score(y, pred, average="micro"))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p1))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred, pos_label=1))
    assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert np.array(m["confusion"]).sum() == 200


def test_multiclass_auroc_is_one_vs_rest_macro():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 25)
    logits = rng.normal(size=(100, 4)) + np.eye(4)[y] * 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = metrics.classification_metrics(y, probs, ("COVID", "Lung_Opacity", "Normal", "Viral"))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert "sensitivity" not in m and len(m["confusion"]) == 4


def test_auroc_handles_ties_and_single_class():
    assert metrics.binary_auroc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert np.isnan(metrics.binary_auroc(np.array([1, 1]), np.array([0.2, 0.9])))


def test_threshold_is_chosen_for_balanced_accuracy_and_applied():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p1 = np.array([0.1, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])  # argmax calls 7 positives
    probs = np.c_[1 - p1, p1]
    t = metrics.choose_threshold(y, probs)
    assert 0.75 < t < 0.8
    m = metrics.classification_metrics(y, probs, ("N", "P"), threshold=t)
    assert m["accuracy"] == 1.0
    assert metrics.classification_metrics(y, probs, ("N", "P"))["accuracy"] == 5 / 8


def test_operating_point_rules_keep_the_asked_specificity_or_sensitivity():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200, int), np.ones(300, int)]
    p1 = np.r_[rng.beta(2, 5, 200), rng.beta(5, 2, 300)]  # overlapping classes: no cut is perfect
    probs = np.c_[1 - p1, p1]
    for target in (0.8, 0.95, 0.97):
        t = metrics.choose_threshold(y, probs, f"spec:{target}")
        m = metrics.classification_metrics(y, probs, ("N", "P"), threshold=t)
        assert m["specificity"] >= target
        # the lowest such cut: one normal score lower would break the specificity asked for
        below = np.sort(p1[y == 0])[int(np.ceil(target * 200)) - 1]
        assert below < t and ((p1[y == 0] < below).mean() < target)
        t2 = metrics.choose_threshold(y, probs, f"sens:{target}")
        m2 = metrics.classification_metrics(y, probs, ("N", "P"), threshold=t2)
        assert m2["sensitivity"] >= target
        assert (p1[y == 1] > t2).mean() < target + 1 / 300 + 1e-9  # the highest such cut
    # stricter specificity -> higher cut; the Youden cut sits between the two operating points here
    cuts = [metrics.choose_threshold(y, probs, r) for r in ("sens:0.97", "val", "spec:0.97")]
    assert cuts == sorted(cuts) and cuts[0] < cuts[2]
    with pytest.raises(ValueError, match="both classes"):
        metrics.choose_threshold(np.ones(4, int), np.c_[1 - p1[:4], p1[:4]], "spec:0.9")


def test_roc_curve_endpoints_and_monotone():
    y = np.array([0, 1, 0, 1, 1])
    fpr, tpr, thr = metrics.roc_curve(y, np.array([0.1, 0.4, 0.35, 0.8, 0.7]))
    assert (fpr[0], tpr[0]) == (0, 0) and (fpr[-1], tpr[-1]) == (1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.isinf(thr[0])


def test_bootstrap_interval_contains_point_estimate():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 120)
    p1 = np.clip(y * 0.4 + rng.random(120) * 0.6, 0, 1)
    probs = np.c_[1 - p1, p1]
    ci = metrics.bootstrap_ci(y, probs, ("N", "P"), n_boot=200)
    acc = metrics.classification_metrics(y, probs, ("N", "P"))["accuracy"]
    assert ci["accuracy"][0] <= acc <= ci["accuracy"][1]
    assert ci["auroc"][1] - ci["auroc"][0] > 0


# --- The hand-written implementation these metrics replaced (cxrdemo/model/metrics.py at ecfa98d), kept verbatim as
# the reference: moving to scikit-learn and SciPy must not move any saved number.

def _ref_confusion_matrix(y_true, y_pred, num_classes):
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def _ref_binary_auroc(y_true, score):
    y_true = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = np.asarray(score)[order]
    i = 0
    while i < len(sorted_scores):
        j = i
        while j + 1 < len(sorted_scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ref_roc_curve(y_true, score):
    y_true = np.asarray(y_true).astype(bool)
    order = np.argsort(-np.asarray(score), kind="mergesort")
    s, y = np.asarray(score)[order], y_true[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps, fps = np.cumsum(y)[distinct], np.cumsum(~y)[distinct]
    tpr = np.r_[0, tps] / max(1, y.sum())
    fpr = np.r_[0, fps] / max(1, (~y).sum())
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def _ref_classification_metrics(y_true, probs, classes, threshold=None):
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    y_pred = metrics.predict_labels(probs, threshold)
    cm = _ref_confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = cm.sum(1) > 0
    if k == 2:
        auroc = _ref_binary_auroc(y_true == 1, probs[:, 1])
    else:
        aucs = [_ref_binary_auroc(y_true == c, probs[:, c]) for c in range(k) if present[c]]
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
        out["sensitivity"], out["specificity"] = float(recall[1]), float(recall[0])
    return out


def _ref_bootstrap_ci(y_true, probs, classes, threshold=None, keys=("accuracy", "sensitivity", "specificity", "auroc"),
                      n_boot=1000, seed=0):
    rng = np.random.default_rng(seed)
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    samples = {k: [] for k in keys}
    for _ in range(n_boot):
        idx = rng.integers(0, len(y_true), len(y_true))
        m = _ref_classification_metrics(y_true[idx], probs[idx], classes, threshold)
        for k in keys:
            if k in m and not np.isnan(m[k]):
                samples[k].append(m[k])
    return {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for k, v in samples.items() if v}


def _random_case(seed: int):
    """Labels and probabilities of many shapes: 2-4 classes, ties (coarse scores), one class, rare classes."""
    rng = np.random.default_rng(seed)
    k = int(rng.choice([2, 2, 2, 3, 4]))
    n = int(rng.integers(2, 300))
    kind = seed % 4
    if kind == 0:  # one class only
        y = np.full(n, int(rng.integers(0, k)))
    elif kind == 1:  # a rare class
        y = (rng.random(n) < 0.05).astype(int) * int(rng.integers(1, k))
    else:
        y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + np.eye(k)[y] * rng.uniform(0, 3)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if kind >= 2 and seed % 3 == 0:  # many ties: scores rounded to one decimal
        probs = np.round(probs, 1)
    threshold = float(rng.uniform(0.2, 0.8)) if k == 2 and seed % 2 else None
    return y, probs, tuple(f"C{i}" for i in range(k)), threshold


def _assert_same_metrics(new: dict, ref: dict) -> None:
    assert new.keys() == ref.keys()
    for key, value in ref.items():
        if isinstance(value, float):
            assert (np.isnan(value) and np.isnan(new[key])) or abs(new[key] - value) <= 1e-12, key
        elif isinstance(value, dict):
            assert new[key].keys() == value.keys()
            assert all(abs(new[key][c] - v) <= 1e-12 for c, v in value.items()), key
        else:
            assert new[key] == value, key


@pytest.mark.parametrize("seed", range(120))
def test_point_metrics_equal_the_hand_written_ones(seed):
    y, probs, classes, threshold = _random_case(seed)
    _assert_same_metrics(metrics.classification_metrics(y, probs, classes, threshold),
                         _ref_classification_metrics(y, probs, classes, threshold))
    for c in range(len(classes)):
        ref = _ref_binary_auroc(y == c, probs[:, c])
        new = metrics.binary_auroc(y == c, probs[:, c])
        assert (np.isnan(ref) and np.isnan(new)) or abs(new - ref) <= 1e-12
        for a, b in zip(metrics.roc_curve(y == c, probs[:, c]), _ref_roc_curve(y == c, probs[:, c])):
            assert a.shape == b.shape and np.array_equal(a, b)  # the same points: the rules cut between them


@pytest.mark.parametrize("seed", range(40))
def test_threshold_rules_equal_the_hand_written_curve(seed):
    y, probs, _, _ = _random_case(seed)
    if probs.shape[1] != 2:
        probs = np.c_[1 - probs[:, -1], probs[:, -1]]
        y = (y == y.max()).astype(int)
    # choose_threshold's 'val' rule reads the ROC curve; both curves agree above, so the cuts must too
    fpr, tpr, thr = _ref_roc_curve(y.astype(bool), probs[:, 1])
    best = int(np.argmax((tpr - fpr)[1:])) + 1
    lower = thr[best + 1] if best + 1 < len(thr) else 0.0
    assert metrics.choose_threshold(y, probs, "val") == float((thr[best] + lower) / 2)


def test_empty_input_gives_nan_not_an_error():
    m = metrics.classification_metrics(np.zeros(0, int), np.zeros((0, 2)), ("N", "P"))
    _assert_same_metrics(m, _ref_classification_metrics(np.zeros(0, int), np.zeros((0, 2)), ("N", "P")))


@pytest.mark.parametrize("seed", range(8))
def test_bootstrap_intervals_equal_the_hand_written_ones(seed):
    y, probs, classes, threshold = _random_case(seed)
    new = metrics.bootstrap_ci(y, probs, classes, threshold, n_boot=100, seed=seed)
    ref = _ref_bootstrap_ci(y, probs, classes, threshold, n_boot=100, seed=seed)
    assert new.keys() == ref.keys()
    for key, (lo, hi) in ref.items():
        assert abs(new[key][0] - lo) <= 0.01 and abs(new[key][1] - hi) <= 0.01, key


def test_bootstrap_intervals_of_a_realistic_test_set_equal_the_hand_written_ones():
    rng = np.random.default_rng(7)
    y = np.r_[np.zeros(234, int), np.ones(390, int)]  # the shape of a chest X-ray test split
    p1 = np.clip(np.r_[rng.beta(2, 6, 234), rng.beta(6, 2, 390)], 0, 1)
    probs = np.c_[1 - p1, p1]
    keys = ("accuracy", "sensitivity", "specificity", "auroc", "f1")
    new = metrics.bootstrap_ci(y, probs, ("N", "P"), 0.5, keys=keys, n_boot=200)
    ref = _ref_bootstrap_ci(y, probs, ("N", "P"), 0.5, keys=keys, n_boot=200)
    assert new.keys() == ref.keys() == {"accuracy", "sensitivity", "specificity", "auroc", "f1"}
    for key, (lo, hi) in ref.items():
        assert abs(new[key][0] - lo) <= 0.01 and abs(new[key][1] - hi) <= 0.01, key


def test_resamples_without_a_class_are_left_out_of_the_auroc_interval():
    y = np.r_[np.zeros(40, int), 1, 1]  # two positive images: many resamples have none, and no AUROC
    p1 = np.r_[np.linspace(0.05, 0.95, 40), 0.5, 0.97]
    probs = np.c_[1 - p1, p1]
    ci = metrics.bootstrap_ci(y, probs, ("N", "P"), n_boot=300)
    ref = _ref_bootstrap_ci(y, probs, ("N", "P"), n_boot=300)
    assert ci.keys() == ref.keys() and all(np.allclose(ci[k], ref[k], rtol=0, atol=1e-12) for k in ref)
    assert 0 < ci["auroc"][0] < ci["auroc"][1] <= 1.0  # from the resamples that drew a positive image


# --- The bootstrap computes every resample at once; per resample it must give scikit-learn's numbers exactly.

_SCALAR_KEYS = ("n", "accuracy", "balanced_accuracy", "precision", "recall", "f1", "micro_recall", "auroc",
                "sensitivity", "specificity")


def _per_resample_ci(y, probs, classes, threshold, keys, n_boot, seed):
    """The bootstrap as it was: classification_metrics (scikit-learn) on each resample, SciPy's quantiles."""
    from scipy import stats
    resamples = np.random.default_rng(seed).integers(0, len(y), (n_boot, len(y)))
    draws = [metrics.classification_metrics(y[idx], probs[idx], classes, threshold) for idx in resamples]
    out = {}
    for k in keys:
        v = np.array([m.get(k, np.nan) for m in draws], dtype=np.float64)
        if not np.isnan(v).all():
            lo, hi = stats.quantile(v, [0.025, 0.975], method="linear", nan_policy="omit")
            out[k] = (float(lo), float(hi))
    return out


@pytest.mark.parametrize("seed", range(16))
def test_resampled_metrics_equal_scikit_learn_on_each_resample(seed):
    y, probs, classes, threshold = _random_case(seed)
    if seed == 5:  # a score that is not a number: AUROC undefined in the resamples that draw it
        probs[0, -1] = np.nan
    resamples = np.random.default_rng(seed).integers(0, len(y), (12, len(y)))
    fast = metrics.resampled_metrics(y, probs, len(classes), threshold, resamples)
    for row, idx in enumerate(resamples):
        slow = metrics.classification_metrics(y[idx], probs[idx], classes, threshold)
        assert {k for k in _SCALAR_KEYS if k in slow} == fast.keys()
        for key, v in fast.items():
            assert (np.isnan(slow[key]) and np.isnan(v[row])) or abs(v[row] - slow[key]) <= 1e-12, (key, row)


@pytest.mark.parametrize("seed", range(6))
def test_bootstrap_intervals_equal_the_per_resample_scikit_learn_ones(seed, monkeypatch):
    y, probs, classes, threshold = _random_case(seed)
    monkeypatch.setattr(metrics, "_CHUNK_CELLS", 7 * len(y))  # several chunks: they must join seamlessly
    new = metrics.bootstrap_ci(y, probs, classes, threshold, keys=_SCALAR_KEYS, n_boot=40, seed=seed)
    ref = _per_resample_ci(y, probs, classes, threshold, _SCALAR_KEYS, n_boot=40, seed=seed)
    assert new.keys() == ref.keys() and "accuracy" in new
    for key, (lo, hi) in ref.items():
        assert abs(new[key][0] - lo) <= 1e-12 and abs(new[key][1] - hi) <= 1e-12, key
