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
