"""Temperature scaling (Guo et al. 2017), its bias-corrected form (Alexandari et al. 2020) and how well
probabilities mean what they say (ECE, reliability curve).

Everything here is fitted on validation images only. Temperature scaling divides the logits by one number T > 0:
it changes how confident the model sounds but never which class ranks first. A model whose scores are shifted
towards one class (its decision threshold far from 50%) also needs a bias: with two classes, softmax(z / T + b)
is Platt scaling of the logit difference, still monotone, so every decision threshold maps to one cut on the
calibrated scale and no decision changes.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special, stats
from sklearn.calibration import calibration_curve

from cxrdemo.errors import ConfigError

T_BOUNDS = (0.05, 20.0)  # separable validation data pushes T towards 0: stop at a finite, still monotone value
N_BINS = 15  # the ECE: 15 equal-width bins on the top-label confidence


def _check_scores(scores: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores as float64 NxK, labels as int64 N) or ConfigError with a sentence saying what is wrong."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ConfigError(f"The {what} must be a table of one row per image and one column per class "
                          f"(at least two classes); got shape {scores.shape}.")
    if len(labels) != len(scores) or labels.ndim != 1:
        raise ConfigError(f"There are {len(scores)} rows of {what} but {len(labels)} labels: they must match.")
    if not len(scores):
        raise ConfigError(f"There are no images to compute this from: the {what} are empty.")
    if not np.isfinite(scores).all():
        raise ConfigError(f"Some {what} are not finite numbers (NaN or infinity): the model output is damaged.")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ConfigError(f"Labels must be class indices 0..{scores.shape[1] - 1}; got {labels.min()}..{labels.max()}.")
    return scores, labels


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    rows = np.arange(len(logits))
    a = (logits - logits[rows, labels][:, None]) / temperature  # log p_y = -logsumexp(a)
    top = a.argmax(axis=1)
    m = a[rows, top]
    rest = np.exp(a - m[:, None])
    rest[rows, top] = 0.0
    # m + log1p(rest) rather than logsumexp: on well-separated images the loss is ~1e-18, which logsumexp rounds
    # to 0, leaving a flat NLL that stops the search anywhere instead of at the lower bound
    return float(np.mean(m + np.log1p(rest.sum(axis=1))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The T > 0 minimising the validation NLL of softmax(logits / T), searched on log T within `bounds`."""
    logits, labels = _check_scores(logits, labels, "logits")
    lo, hi = bounds
    if not 0 < lo < hi:
        raise ConfigError(f"Temperature bounds must satisfy 0 < low < high; got {bounds}.")
    # The NLL is convex in 1/T (log-sum-exp of a linear function minus a linear one), hence unimodal in log T:
    # bounded Brent finds the one minimum, deterministically.
    res = optimize.minimize_scalar(lambda s: _nll(logits, labels, math.exp(s)), bounds=(math.log(lo), math.log(hi)),
                                   method="bounded", options={"xatol": 1e-7})
    return float(math.exp(res.x))


B_BOUND = 20.0  # |bias| beyond this means the validation images all sit on one side: stop at a finite value


def _binary_nll(s: np.ndarray, y: np.ndarray, log_t: float, b: float) -> float:
    """Mean NLL of two-class labels under p(class 1) = sigmoid(s / T + b), s = z1 - z0."""
    a = s / math.exp(log_t) + b
    return float(np.mean(np.logaddexp(0.0, a) - y * a))


def fit_bias_corrected(logits: np.ndarray, labels: np.ndarray,
                       bounds: tuple[float, float] = T_BOUNDS) -> tuple[float, tuple[float, ...]]:
    """(T, bias per class) minimising the NLL of softmax(logits / T + bias), bias of class 0 fixed at 0.

    Two classes: T and b together (Platt scaling of z1 - z0, tested against scikit-learn's logistic regression).
    More classes: T only, bias 0 - a bias per class could reorder the classes and change argmax decisions."""
    logits, labels = _check_scores(logits, labels, "logits")
    k = logits.shape[1]
    if k != 2 or len(np.unique(labels)) < 2:  # one class only: a bias would run to its bound
        return fit_temperature(logits, labels, bounds), (0.0,) * k
    lo, hi = bounds
    if not 0 < lo < hi:
        raise ConfigError(f"Temperature bounds must satisfy 0 < low < high; got {bounds}.")
    s, y = logits[:, 1] - logits[:, 0], labels.astype(np.float64)
    t0 = math.log(fit_temperature(logits, labels, bounds))  # a deterministic start: the temperature-only fit
    res = optimize.minimize(lambda v: _binary_nll(s, y, v[0], v[1]), x0=np.array([t0, 0.0]), method="L-BFGS-B",
                            bounds=[(math.log(lo), math.log(hi)), (-B_BOUND, B_BOUND)],
                            options={"ftol": 1e-12, "gtol": 1e-9})
    return float(math.exp(res.x[0])), (0.0, float(res.x[1]))


def apply_calibration(logits: np.ndarray, temperature: float, bias: tuple[float, ...] | None = None) -> np.ndarray:
    """Calibrated probabilities softmax(logits / T + bias), NxK float64."""
    if not temperature > 0:
        raise ConfigError(f"A temperature must be a positive number; got {temperature}.")
    z = np.asarray(logits, dtype=np.float64) / temperature
    if bias is not None and any(bias):
        if len(bias) != z.shape[-1]:
            raise ConfigError(f"The calibration has {len(bias)} class biases but the model {z.shape[-1]} classes.")
        z = z + np.asarray(bias, dtype=np.float64)
    return special.softmax(z, axis=-1)


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities softmax(logits / T), NxK float64."""
    return apply_calibration(logits, temperature)


def threshold_on_calibrated_scale(threshold_prob: float | None, temperature: float,
                                  bias_gap: float = 0.0) -> float | None:
    """The two-class cut on p(class 1), chosen on uncalibrated scores, moved to the calibrated scale.

    With two classes p(class 1) = sigmoid(z1 - z0), so p >= t  <=>  z1 - z0 >= logit(t)  <=>
    sigmoid((z1 - z0) / T + g) >= sigmoid(logit(t) / T + g), g = b1 - b0: the same images cross the cut.
    None (the most probable class, i.e. z1 - z0 > 0) stays None without a bias, and is the cut sigmoid(g) with one.
    """
    if not temperature > 0:
        raise ConfigError(f"A temperature must be a positive number; got {temperature}.")
    if threshold_prob is None:
        return None if bias_gap == 0.0 else float(special.expit(bias_gap))
    if not 0.0 <= threshold_prob <= 1.0:
        raise ConfigError(f"A decision threshold is a probability between 0 and 1; got {threshold_prob}.")
    return float(special.expit(special.logit(threshold_prob) / temperature + bias_gap))


def _top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence of the most probable class, 1.0 where that class is the true one)."""
    return probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64)


def _bin_ids(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins (i/n, (i+1)/n], the first closed at 0: the same edges as sklearn's calibration_curve."""
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], confidence)


def _ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    """Sum over bins of (share of images in the bin) x |accuracy - mean confidence| in the bin."""
    ids = _bin_ids(confidence, n_bins)
    count = np.bincount(ids, minlength=n_bins)
    gap = np.bincount(ids, weights=correct - confidence, minlength=n_bins)  # per bin: n x (accuracy - confidence)
    return float(np.abs(gap).sum() / count.sum())


def _check_probs(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = _check_scores(probs, labels, "probabilities")
    if probs.min() < 0 or probs.max() > 1 + 1e-6:
        raise ConfigError("Probabilities must lie between 0 and 1: were logits passed instead?")
    if n_bins < 1:
        raise ConfigError(f"The number of bins must be at least 1; got {n_bins}.")
    return probs, labels


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """Top-label ECE with `n_bins` equal-width bins (Guo et al. 2017): 0 when confidence matches accuracy."""
    probs, labels = _check_probs(probs, labels, n_bins)
    return _ece(*_top_label(probs, labels), n_bins)


def ece_interval(probs: np.ndarray, labels: np.ndarray, n_resamples: int = 2000, seed: int = 0,
                 n_bins: int = N_BINS) -> tuple[float, float]:
    """95% percentile bootstrap interval of the top-label ECE, resampling images (deterministic for a seed)."""
    probs, labels = _check_probs(probs, labels, n_bins)
    confidence, correct = _top_label(probs, labels)
    if len(confidence) < 2:
        return float("nan"), float("nan")  # one image: there is nothing to resample
    res = stats.bootstrap((confidence, correct), lambda c, k: _ece(c, k, n_bins), paired=True, vectorized=False,
                          n_resamples=n_resamples, method="percentile", confidence_level=0.95,
                          rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def reliability_curve(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Top-label reliability diagram: per non-empty bin its mean confidence, accuracy and image count."""
    probs, labels = _check_probs(probs, labels, n_bins)
    confidence, correct = _top_label(probs, labels)
    accuracy, mean_confidence = calibration_curve(correct.astype(np.int64), np.clip(confidence, 0.0, 1.0),
                                                  n_bins=n_bins, strategy="uniform", pos_label=1)
    count = np.bincount(_bin_ids(confidence, n_bins), minlength=n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    nonzero = count > 0  # calibration_curve drops empty bins; keep the counts and edges aligned with it
    return {"confidence": mean_confidence, "accuracy": accuracy, "count": count[nonzero],
            "bin_low": edges[:-1][nonzero], "bin_high": edges[1:][nonzero]}
