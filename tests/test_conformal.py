"""Mondrian conformal sets keep their per-class promise, agree with MAPIE, and never contradict the verdict."""

import json
import math

import numpy as np
import pytest
from scipy import special

from cxrdemo.errors import ConfigError
from cxrdemo.model import conformal as cf
from cxrdemo.model import metrics


def _images(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exchangeable (probabilities, labels) of an overconfident, imperfect model with imbalanced classes."""
    y = rng.choice(k, n, p=np.r_[0.25, np.full(k - 1, 0.75 / (k - 1))])
    logits = rng.normal(0.0, 1.0, (n, k)) + 1.5 * np.eye(k)[y]
    return special.softmax(2.5 * logits, axis=1), y


def _raw_masks(probs: np.ndarray, record: cf.ConformalRecord) -> np.ndarray:
    """The conformal sets straight from the formula, before the repairs."""
    raw = (1.0 - probs) <= np.asarray(record.qhat)[None, :]
    assert (cf.conformal_masks(probs, record) == raw).all()
    return raw


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("level", [0.90, 0.95])
def test_per_class_coverage_is_kept_over_many_seeds(k, level):
    covered, covered_raw, sizes = [], [], []
    n_val = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        p_val, y_val = _images(rng, 300, k)
        p_test, y_test = _images(rng, 2000, k)
        record = cf.fit_conformal(p_val, y_val, level)
        assert record.ok
        verdicts = metrics.predict_labels(p_test, 0.3 if k == 2 else None)
        mask = cf.set_masks(p_test, record, verdicts)
        raw = _raw_masks(p_test, record)
        hit, hit_raw = mask[np.arange(len(y_test)), y_test], raw[np.arange(len(y_test)), y_test]
        covered.append([hit[y_test == c].mean() for c in range(k)])
        covered_raw.append([hit_raw[y_test == c].mean() for c in range(k)])
        sizes.append(mask.sum(1).mean())
        n_val.append(record.n)
    covered, covered_raw, n_val = np.array(covered), np.array(covered_raw), np.array(n_val)
    # each class is covered at >= level on average (standard error over 200 seeds ~0.0015)
    assert (covered_raw.mean(0) >= level - 0.005).all()
    assert (covered.mean(0) >= covered_raw.mean(0)).all()  # adding the verdict only adds coverage
    # ...and not trivially: the raw sets stay within the known upper bound level + 1/(n_k + 1)
    assert (covered_raw.mean(0) <= level + (1.0 / (n_val + 1)).mean(0) + 0.005).all()
    assert np.mean(sizes) < k


def test_quantiles_and_sets_agree_with_mapie():
    pytest.importorskip("mapie")
    from mapie.classification import SplitConformalClassifier
    from sklearn.base import BaseEstimator, ClassifierMixin

    class GivenProbabilities(ClassifierMixin, BaseEstimator):
        """A 'model' whose input is already its probabilities, so MAPIE conformalizes exactly ours."""

        def fit(self, X, y=None):
            self.classes_ = np.arange(np.asarray(X).shape[1])
            return self

        def predict_proba(self, X):
            return np.asarray(X)

        def predict(self, X):
            return np.asarray(X).argmax(1)

    for seed, k, level in [(0, 2, 0.9), (1, 2, 0.95), (2, 3, 0.9), (3, 4, 0.95)]:
        rng = np.random.default_rng(seed)
        p_val, y_val = _images(rng, int(rng.integers(150, 400)), k)
        p_test, _ = _images(rng, 1000, k)
        record = cf.fit_conformal(p_val, y_val, level)
        ours = _raw_masks(p_test, record)
        for c in range(k):
            # Mondrian = one LAC split-conformal classifier per class, conformalized on that class's images
            mapie = SplitConformalClassifier(GivenProbabilities().fit(p_val), confidence_level=level,
                                             conformity_score="lac", prefit=True)
            with pytest.warns(UserWarning, match="less labels"):  # by design: one class per conformalization
                mapie.conformalize(p_val[y_val == c], y_val[y_val == c])
            _, sets = mapie.predict_set(p_test)
            qhat = mapie._mapie_classifier.conformity_score_function_.quantiles_[0]  # set by predict_set
            assert record.qhat[c] == pytest.approx(qhat, abs=1e-12)
            assert (sets[:, c, 0] == ours[:, c]).all()


def test_quantile_is_the_corrected_order_statistic():
    scores = np.linspace(0.05, 0.95, 19)  # 1 - p of 19 NORMAL images
    probs = np.c_[1 - scores, scores]
    labels = np.zeros(19, int)
    probs, labels = np.r_[probs, [[0.1, 0.9]] * 19], np.r_[labels, np.ones(19, int)]
    r90 = math.ceil(20 * 0.9)  # 18th smallest score
    assert cf.fit_conformal(probs, labels, 0.90).qhat[0] == pytest.approx(np.sort(scores)[r90 - 1])
    assert cf.fit_conformal(probs, labels, 0.95).qhat[0] == pytest.approx(scores.max())  # 19 of 19


@pytest.mark.parametrize("level", [0.80, 0.90, 0.95, 0.99])
def test_minimum_class_size_matches_the_rank_condition(level):
    need = cf.min_images(level)
    assert math.ceil((need + 1) * level - 1e-9) <= need
    assert math.ceil(need * level - 1e-9) > need - 1  # one image fewer would need a score beyond the largest


def test_too_few_validation_images_give_no_set_and_a_reason():
    rng = np.random.default_rng(4)
    p, y = _images(rng, 200, 2)
    keep = np.r_[np.flatnonzero(y == 0)[:18], np.flatnonzero(y == 1)]
    record = cf.fit_conformal(p[keep], y[keep], 0.95, classes=("NORMAL", "PNEUMONIA"))
    assert not record.ok and record.qhat[0] is None and record.n[0] == 18
    assert "NORMAL has 18" in record.reason and "at least 19" in record.reason
    assert cf.prediction_set(p[0], record, 0) is None
    with pytest.raises(ConfigError, match="at least 19"):
        cf.set_masks(p, record, np.zeros(len(p), int))
    keep19 = np.r_[np.flatnonzero(y == 0)[:19], np.flatnonzero(y == 1)]
    assert cf.fit_conformal(p[keep19], y[keep19], 0.95).ok
    assert cf.fit_conformal(p[keep], y[keep], 0.90).ok  # 90% needs only 9
    missing = cf.fit_conformal(p[y == 1], y[y == 1], 0.90)  # no NORMAL validation image at all
    assert not missing.ok and missing.n[0] == 0


def test_sets_never_contradict_the_verdict_on_many_images():
    rng = np.random.default_rng(5)
    p_val, y_val = _images(rng, 400, 2)
    p, _ = _images(rng, 20000, 2)
    p = np.r_[p, rng.dirichlet([0.3, 0.3], 5000)]  # plus extreme, near-certain and near-even images
    repaired = 0  # images whose conformal set was empty or lacked the verdict
    for level in cf.LEVELS:
        record = cf.fit_conformal(p_val, y_val, level)
        for threshold in (None, 0.088, 0.5, 0.9):
            verdicts = metrics.predict_labels(p, threshold)
            outside = rng.random(len(p)) < 0.05  # images the in-domain check would flag
            mask = cf.set_masks(p, record, verdicts, outside)
            assert mask[outside].all()  # unlike the training images: every class, whatever the scores say
            assert (mask[~outside] == cf.set_masks(p[~outside], record, verdicts[~outside])).all()
            size = mask.sum(1)
            assert (mask[np.arange(len(p)), verdicts]).all() and (size >= 1).all()
            single = size == 1
            assert (mask[single].argmax(1) == verdicts[single]).all()
            raw = _raw_masks(p, record)
            assert (mask >= raw).all()  # a superset of the conformal set
            assert mask[raw.sum(1) == 0].all()  # an empty conformal set is "can't tell", not {verdict}
            repaired += int((size > raw.sum(1)).sum())
        for i in rng.choice(len(p), 300, replace=False):
            s = cf.prediction_set(p[i], record, int(verdicts[i]))
            assert int(verdicts[i]) in s and (len(s) > 1 or s == (int(verdicts[i]),))
    assert repaired > 100  # the rule was exercised, not only the easy cases


def test_record_round_trips_through_json():
    rng = np.random.default_rng(6)
    p, y = _images(rng, 300, 3)
    record = cf.fit_conformal(p, y, 0.95, classes=["A", "B", "C"])
    again = cf.ConformalRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record
    assert set(record.to_dict()) == {"level", "qhat", "n", "ok", "reason", "classes"}


def test_coverage_report_counts_by_hand():
    sets = [(0,), (0, 1), (1,), (0,)]
    labels = np.array([0, 1, 0, 0])
    rep = cf.coverage_report(sets, labels, 0.9, classes=("NORMAL", "PNEUMONIA"))
    assert rep["level"] == 0.9 and rep["n"] == 4
    assert rep["coverage"] == pytest.approx(0.75) and rep["mean_size"] == pytest.approx(1.25)
    assert rep["share_both"] == pytest.approx(0.25)
    assert rep["per_class"]["NORMAL"] == pytest.approx({"n": 3, "coverage": 2 / 3, "mean_size": 1.0,
                                                        "share_both": 0.0})
    assert rep["per_class"]["PNEUMONIA"]["coverage"] == 1.0
    mask = np.array([[1, 0], [1, 1], [0, 1], [1, 0]], bool)
    assert cf.coverage_report(mask, labels, 0.9, classes=("NORMAL", "PNEUMONIA")) == rep
    with pytest.raises(ConfigError, match="must match"):
        cf.coverage_report(mask[:3], labels, 0.9)


def test_bad_inputs_say_what_is_wrong():
    p = np.full((4, 2), 0.5)
    with pytest.raises(ConfigError, match="coverage level"):
        cf.fit_conformal(p, np.zeros(4, int), 90)
    with pytest.raises(ConfigError, match="must match"):
        cf.fit_conformal(p, np.zeros(3, int))
    with pytest.raises(ConfigError, match="between 0 and 1"):
        cf.fit_conformal(p * 3, np.zeros(4, int))


def test_the_three_repairs_by_hand():
    record = cf.ConformalRecord(level=0.9, qhat=[0.1, 0.3], n=[50, 50], ok=True)
    assert cf.prediction_set([0.95, 0.05], record, 0) == (0,)  # conformal {NORMAL}, verdict NORMAL
    assert cf.prediction_set([0.2, 0.8], record, 1) == (1,)
    assert cf.prediction_set([0.95, 0.05], record, 1) == (0, 1)  # conformal {NORMAL}, verdict PNEUMONIA: both
    assert cf.prediction_set([0.8, 0.2], record, 0) == (0, 1)  # conformal set empty: can't tell
    assert cf.prediction_set([0.8, 0.2], record, 1) == (0, 1)
    # the third: an image the in-domain check flags is outside the promise, even when one class looks certain
    assert cf.prediction_set([0.999, 0.001], record, 0, outside=True) == (0, 1)
    assert cf.prediction_set([0.001, 0.999], record, 1, outside=True) == (0, 1)
    assert cf.prediction_set([0.001, 0.999], record, 1, outside=False) == (1,)
    with pytest.raises(ConfigError, match="in-domain flags"):
        cf.set_masks(np.array([[0.9, 0.1], [0.2, 0.8]]), record, np.array([0, 1]), np.array([True]))
