"""Temperature scaling recovers a known miscalibration; ECE and the reliability curve match hand-computed numbers."""

import numpy as np
import pytest
from scipy import special

from cxrdemo.errors import ConfigError
from cxrdemo.model import calibration as cal
from cxrdemo.model import metrics


def _calibrated_logits(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution: labels are drawn from it, so T = 1 is right."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, (n, k))
    p = special.softmax(z, axis=1)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return z, labels


@pytest.mark.parametrize("k", [2, 4])
def test_overconfident_logits_recover_temperature_three_and_ece_drops(k):
    z, y = _calibrated_logits(20000, k, seed=k)
    logits = 3.0 * z  # a model three times too sure of itself
    t = cal.fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.08)
    before = cal.expected_calibration_error(special.softmax(logits, axis=1), y)
    after = cal.expected_calibration_error(cal.apply_temperature(logits, t), y)
    assert before > 0.1 and after < 0.02


def test_calibrated_logits_keep_temperature_near_one_and_fit_is_deterministic():
    z, y = _calibrated_logits(5000, 2, seed=7)
    t = cal.fit_temperature(z, y)
    assert t == pytest.approx(1.0, abs=0.1)
    assert cal.fit_temperature(z, y) == t


def test_separable_data_stops_at_the_lower_bound():
    y = np.array([0, 1] * 50)
    logits = np.c_[np.where(y == 0, 4.0, -4.0), np.where(y == 1, 4.0, -4.0)]
    t = cal.fit_temperature(logits, y)
    assert cal.T_BOUNDS[0] <= t < cal.T_BOUNDS[0] * 1.01
    assert np.isfinite(cal.apply_temperature(logits, t)).all()


def test_temperature_never_changes_the_most_probable_class():
    z, _ = _calibrated_logits(2000, 5, seed=3)
    for t in (0.1, 0.7, 2.5, 19.0):
        assert (cal.apply_temperature(z, t).argmax(1) == z.argmax(1)).all()


@pytest.mark.parametrize("threshold", [0.088, 0.5, 0.93, 1e-4])
@pytest.mark.parametrize("temperature", [0.3, 1.7, 6.0])
def test_threshold_on_calibrated_scale_keeps_every_decision(threshold, temperature):
    rng = np.random.default_rng(11)
    z = rng.normal(0.0, 3.0, (50000, 2))
    # add images whose margin lies within a hair of the cut, where a wrong mapping would show first
    d = special.logit(threshold) + rng.uniform(-1e-6, 1e-6, 2000)
    z = np.r_[z, np.c_[np.zeros_like(d), d]]
    before = metrics.predict_labels(special.softmax(z, axis=1), threshold)
    cut = cal.threshold_on_calibrated_scale(threshold, temperature)
    after = metrics.predict_labels(cal.apply_temperature(z, temperature), cut)
    assert (before == after).all()
    assert 0 < before.mean() < 1
    if threshold != 0.5:  # the old cut read on the new scale would change answers: the mapping matters
        assert (metrics.predict_labels(cal.apply_temperature(z, temperature), threshold) != before).any()


def test_threshold_mapping_edges():
    assert cal.threshold_on_calibrated_scale(None, 2.0) is None
    assert cal.threshold_on_calibrated_scale(0.5, 3.0) == pytest.approx(0.5)
    assert cal.threshold_on_calibrated_scale(0.088, 1.0) == pytest.approx(0.088)
    assert cal.threshold_on_calibrated_scale(0.088, 2.0) > 0.088  # a softer model moves a low cut towards 0.5
    with pytest.raises(ConfigError):
        cal.threshold_on_calibrated_scale(1.5, 1.0)
    with pytest.raises(ConfigError):
        cal.threshold_on_calibrated_scale(0.5, 0.0)


def test_ece_matches_a_hand_computed_example():
    # top-label confidences .9 (right), .75 (wrong), .7 (right), .55 (wrong); 5 bins of width 0.2
    probs = np.array([[0.9, 0.1], [0.75, 0.25], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 0])
    # bin (.8,1]: 1/4 * |1 - .9|; bin (.6,.8]: 2/4 * |.5 - .725|; bin (.4,.6]: 1/4 * |0 - .55|
    expected = 0.25 * 0.1 + 0.5 * 0.225 + 0.25 * 0.55
    assert cal.expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(expected)
    assert expected == pytest.approx(0.275)


def test_ece_with_one_class_and_empty_bins():
    probs = np.array([[0.95, 0.05]] * 10)
    assert cal.expected_calibration_error(probs, np.zeros(10, int)) == pytest.approx(0.05)  # 14 bins empty
    assert cal.expected_calibration_error(probs, np.ones(10, int)) == pytest.approx(0.95)
    assert cal.expected_calibration_error(np.array([[0.6, 0.4]]), np.array([0])) == pytest.approx(0.4)


def test_ece_interval_contains_the_estimate_and_repeats_with_a_seed():
    z, y = _calibrated_logits(300, 2, seed=5)
    probs = special.softmax(2.0 * z, axis=1)
    ece = cal.expected_calibration_error(probs, y)
    low, high = cal.ece_interval(probs, y, n_resamples=500, seed=1)
    assert low < ece < high and high - low < 0.15
    assert cal.ece_interval(probs, y, n_resamples=500, seed=1) == (low, high)
    assert all(np.isnan(cal.ece_interval(probs[:1], y[:1])))


def test_reliability_curve_bins_agree_with_a_direct_count():
    z, y = _calibrated_logits(1000, 3, seed=9)
    probs = special.softmax(2.0 * z, axis=1)
    curve = cal.reliability_curve(probs, y, n_bins=10)
    conf, correct = probs.max(1), probs.argmax(1) == y
    assert curve["count"].sum() == 1000 and (curve["count"] > 0).all()
    for c, acc, n, lo, hi in zip(curve["confidence"], curve["accuracy"], curve["count"], curve["bin_low"],
                                 curve["bin_high"]):
        inside = (conf > lo) & (conf <= hi)
        assert inside.sum() == n
        assert acc == pytest.approx(correct[inside].mean()) and c == pytest.approx(conf[inside].mean())
    # the weighted gap over the curve is the ECE with the same bins
    gap = (curve["count"] * np.abs(curve["accuracy"] - curve["confidence"])).sum() / 1000
    assert gap == pytest.approx(cal.expected_calibration_error(probs, y, n_bins=10))


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ConfigError, match="labels"):
        cal.fit_temperature(np.zeros((3, 2)), np.zeros(4, int))
    with pytest.raises(ConfigError, match="class indices"):
        cal.expected_calibration_error(np.full((2, 2), 0.5), np.array([0, 2]))
    with pytest.raises(ConfigError, match="between 0 and 1"):
        cal.expected_calibration_error(np.array([[3.0, -1.0]]), np.array([0]))
    with pytest.raises(ConfigError, match="not finite"):
        cal.fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ConfigError, match="empty"):
        cal.fit_temperature(np.zeros((0, 2)), np.zeros(0, int))
    with pytest.raises(ConfigError, match="positive"):
        cal.apply_temperature(np.zeros((1, 2)), -1.0)


def _shifted_logits(n: int, seed: int, scale: float, shift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-class logits z1 - z0 = scale * s - shift whose true p(class 1) is sigmoid(s): too sure and biased."""
    rng = np.random.default_rng(seed)
    s = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < special.expit(s)).astype(np.int64)
    diff = scale * s - shift
    return np.c_[np.zeros(n), diff], y, s


def test_bias_corrected_fit_recovers_a_planted_scale_and_shift_where_temperature_cannot():
    z, y, _ = _shifted_logits(40000, 1, scale=2.0, shift=3.0)
    t, bias = cal.fit_bias_corrected(z, y)
    assert t == pytest.approx(2.0, rel=0.05) and bias[0] == 0.0 and bias[1] == pytest.approx(1.5, abs=0.1)
    after = cal.expected_calibration_error(cal.apply_calibration(z, t, bias), y)
    temperature_only = cal.expected_calibration_error(cal.apply_temperature(z, cal.fit_temperature(z, y)), y)
    assert after < 0.015 < temperature_only


def test_bias_corrected_fit_equals_scikit_learn_logistic_regression_on_the_logit_difference():
    from sklearn.linear_model import LogisticRegression

    for seed in range(5):
        z, y, _ = _shifted_logits(3000, seed, scale=0.5 + seed, shift=seed - 2.0)
        t, bias = cal.fit_bias_corrected(z, y)
        lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit((z[:, 1] - z[:, 0])[:, None], y)
        assert 1.0 / t == pytest.approx(lr.coef_[0, 0], rel=1e-3)
        assert bias[1] - bias[0] == pytest.approx(lr.intercept_[0], abs=1e-3)


def test_bias_corrected_fit_keeps_more_classes_and_one_class_to_temperature_only():
    z, y = _calibrated_logits(3000, 4, seed=2)
    t, bias = cal.fit_bias_corrected(3.0 * z, y)
    assert bias == (0.0,) * 4 and t == pytest.approx(cal.fit_temperature(3.0 * z, y))
    assert cal.fit_bias_corrected(z[:, :2], np.zeros(3000, int))[1] == (0.0, 0.0)


@pytest.mark.parametrize("threshold", [None, 0.088, 0.5, 0.93])
@pytest.mark.parametrize("temperature,gap", [(0.4, -2.0), (1.7, 3.9), (6.0, 0.7)])
def test_threshold_with_a_bias_keeps_every_decision(threshold, temperature, gap):
    rng = np.random.default_rng(4)
    z = np.c_[np.zeros(50000), rng.normal(0.0, 3.0, 50000)]
    before = metrics.predict_labels(special.softmax(z, axis=1), threshold)
    cut = cal.threshold_on_calibrated_scale(threshold, temperature, gap)
    after = metrics.predict_labels(cal.apply_calibration(z, temperature, (0.0, gap)), cut)
    assert np.array_equal(before, after)
