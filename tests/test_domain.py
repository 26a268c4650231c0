"""The in-domain check: Mahalanobis distance to class-conditional Gaussians, cut-off chosen on validation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from cxrdemo.errors import RunError
from cxrdemo.model import domain
from cxrdemo.model.backbones import build_backbone
from cxrdemo.views.checks import domain_sentence
from cxrdemo.model.domain import (
    DomainRecord,
    check_domain,
    fit_domain,
    in_domain,
    score_domain,
)


def gaussian_classes(rng: np.random.Generator, n_per_class: int, n_classes: int, dim: int,
                     sep: float = 4.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of `n_classes` Gaussians sharing one anisotropic covariance; returns (x, y, mixing matrix)."""
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim) + np.diag(rng.uniform(0.5, 2.0, dim))
    centres = rng.normal(size=(n_classes, dim)) * sep
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = centres[y] + rng.normal(size=(len(y), dim)) @ mix
    return x.astype(np.float32), y, centres


def test_cutoff_keeps_the_quantile_of_validation_points():
    rng = np.random.default_rng(0)
    x, y, _ = gaussian_classes(rng, 1000, 2, 8)
    train, val = slice(0, None, 2), slice(1, None, 2)
    for q in (0.9, 0.95, 0.99):
        rec = fit_domain(x[train], y[train], x[val], quantile=q)
        kept = np.mean(score_domain(rec, x[val]) <= rec.cutoff)
        assert kept == pytest.approx(q, abs=0.002)
        assert rec.quantile == q and rec.n_train == 1000 and rec.n_val == 1000 and rec.feature_dim == 8


def test_new_draws_stay_in_and_far_points_are_flagged():
    rng = np.random.default_rng(1)
    x, y, centres = gaussian_classes(rng, 1500, 2, 32)
    rec = fit_domain(x[:2000], y[:2000], x[2000:2500], quantile=0.99, transform="none")
    fresh = score_domain(rec, x[2500:])
    assert 0.97 <= np.mean(fresh <= rec.cutoff) <= 1.0  # new in-distribution points: ~1% flagged
    # Points pushed away from every class along random directions, 3x the typical spread.
    spread = np.sqrt(np.median(np.square(x[:2000] - centres[y[:2000]]).sum(1)))
    away = centres[rng.integers(0, 2, 500)] + 3 * spread * rng.normal(size=(500, 32)) / np.sqrt(32)
    far = score_domain(rec, away.astype(np.float32))
    assert np.mean(far > rec.cutoff) == 1.0 and np.median(far) > 2 * rec.cutoff
    # Halfway between two class means is further than either class's own points: min over classes, not a mixture.
    mid = score_domain(rec, centres.mean(0, keepdims=True).astype(np.float32))
    assert mid[0] > np.median(fresh)


def test_distance_is_the_mahalanobis_distance_to_the_nearest_class():
    rng = np.random.default_rng(2)
    x, y, _ = gaussian_classes(rng, 3000, 2, 4, sep=10.0)
    rec = fit_domain(x, y, x[:100], transform="none")
    assert rec.shrinkage < 0.05  # plenty of samples in 4 dimensions: hardly any shrinkage
    means = np.stack([x[y == c].mean(0) for c in (0, 1)]).astype(np.float64)
    resid = x - means[y]
    prec = np.linalg.inv(np.cov(resid.T, bias=True))
    pts = x[:50].astype(np.float64)
    expect = np.sqrt(np.min([np.einsum("nd,de,ne->n", pts - m, prec, pts - m) for m in means], 0))
    np.testing.assert_allclose(score_domain(rec, x[:50]), expect, rtol=0.03)


def test_sqrt_transform_is_the_distance_on_signed_square_roots():
    """Pooled ReLU features are skewed; the record applies the same signed square root at fit and score time."""
    rng = np.random.default_rng(8)
    x = rng.gamma(0.5, 2.0, size=(2000, 6)).astype(np.float32)  # non-negative, long-tailed, like pooled ReLU
    x[:, 0] -= 0.2  # SiLU-like features dip below zero
    y = (rng.random(2000) < 0.3).astype(int)
    rec = fit_domain(x[:1500], y[:1500], x[1500:])
    assert rec.transform == "sqrt" and rec.quantile == domain.DEFAULT_QUANTILE
    root = np.sign(x) * np.sqrt(np.abs(x))
    plain = fit_domain(root[:1500], y[:1500], root[1500:], transform="none")
    np.testing.assert_allclose(score_domain(rec, x), score_domain(plain, root), rtol=1e-4)
    assert rec.cutoff == pytest.approx(plain.cutoff, rel=1e-4) and np.all(np.isfinite(score_domain(rec, x)))


@pytest.mark.parametrize("n_classes", [2, 3, 7])
def test_any_number_of_classes(n_classes):
    rng = np.random.default_rng(n_classes)
    x, y, _ = gaussian_classes(rng, 200, n_classes, 12)
    rec = fit_domain(x[::2], y[::2], x[1::2], quantile=0.9, transform="none")
    assert tuple(rec.means.shape) == (n_classes, 12)
    # each class mean scores near zero: every class is represented
    assert np.all(score_domain(rec, rec.means) < 0.5 * rec.cutoff)
    assert np.mean(score_domain(rec, x[1::2]) <= rec.cutoff) == pytest.approx(0.9, abs=0.01)


def test_more_dimensions_than_images_still_fits():
    """Shrinkage keeps the covariance invertible when D > N (a wide backbone on a small dataset)."""
    rng = np.random.default_rng(3)
    x, y, _ = gaussian_classes(rng, 20, 2, 64)
    rec = fit_domain(x, y, x, quantile=0.95)
    assert 0 < rec.shrinkage <= 1 and np.isfinite(rec.cutoff)
    assert np.all(np.isfinite(score_domain(rec, rng.normal(size=(5, 64)) * 100)))


def test_record_round_trips_through_a_dict_and_torch_save():
    rng = np.random.default_rng(4)
    x, y, _ = gaussian_classes(rng, 100, 2, 10)
    rec = fit_domain(x, y, x, quantile=0.99)
    d = rec.to_dict()
    assert set(d) == {"method", "means", "precision_factor", "cutoff", "quantile", "n_train", "n_val",
                      "feature_dim", "layers", "shrinkage", "transform", "val_scores"}
    buf = io.BytesIO()
    torch.save({"domain": d}, buf)
    buf.seek(0)
    back = DomainRecord.from_dict(torch.load(buf, weights_only=True)["domain"])
    np.testing.assert_array_equal(score_domain(back, x), score_domain(rec, x))
    assert back.cutoff == rec.cutoff and back.n_train == 200 and back.means.dtype == torch.float32
    as_lists = {**d, "means": d["means"].tolist(), "precision_factor": d["precision_factor"].tolist()}
    np.testing.assert_allclose(score_domain(DomainRecord.from_dict(as_lists), x), score_domain(rec, x))
    assert back.val_scores.tolist() == sorted(score_domain(rec, x).astype(np.float32).tolist())  # every one, sorted
    payload = 4 * (10 * 10 + 2 * 10 + 200)  # float32 factor, means, validation scores; the rest: torch.save's framing
    assert payload < domain.record_bytes(rec) < payload + 3000


@pytest.mark.parametrize("damage", ["missing", "shape", "method", "transform"])
def test_a_damaged_record_is_refused_with_a_sentence(damage):
    rng = np.random.default_rng(5)
    x, y, _ = gaussian_classes(rng, 50, 2, 6)
    d = fit_domain(x, y, x).to_dict()
    if damage == "missing":
        del d["cutoff"]
    elif damage == "shape":
        d["precision_factor"] = d["precision_factor"][:5]
    elif damage == "method":
        d["method"] = "knn"
    else:
        d["transform"] = "log"
    with pytest.raises(RunError, match="in-domain description"):
        DomainRecord.from_dict(d)


def test_bad_inputs_are_refused():
    rng = np.random.default_rng(6)
    x, y, _ = gaussian_classes(rng, 50, 2, 6)
    with pytest.raises(ValueError, match="quantile"):
        fit_domain(x, y, x, quantile=1.0)
    with pytest.raises(ValueError, match="every class"):
        fit_domain(x, np.zeros(len(x), int), x)
    with pytest.raises(ValueError, match="validation"):
        fit_domain(x, y, x[:0])
    with pytest.raises(ValueError, match="transform"):
        fit_domain(x, y, x, transform="log")


def test_in_domain_and_sentence():
    rng = np.random.default_rng(7)
    x, y, _ = gaussian_classes(rng, 2000, 2, 5)
    rec = fit_domain(x[:4353], y[:4353], x[:200])
    assert rec.n_train == 4000
    assert in_domain(rec, rec.cutoff) and not in_domain(rec, rec.cutoff * 1.01) and not in_domain(rec, float("nan"))
    out = domain_sentence(check_domain(rec, rec.cutoff + 1))
    assert out.startswith("This image is unlike the 4,000 images this model learned from")
    assert "means little here" in out and "99.5% of validation images" in out
    assert domain_sentence(check_domain(rec, 0.0)).startswith("This image resembles the 4,000 images")


@pytest.mark.parametrize("size", [32, 64])
def test_features_of_a_real_net_have_the_pooled_dimension(size):
    torch.manual_seed(0)
    net = build_backbone("cnn8", 3).train()
    x = torch.randn(5, 3, size, size)
    f = domain.features(net, x, batch_size=2)
    assert tuple(f.shape) == (5, 256) and f.dtype == torch.float32
    assert net.training  # the caller's mode is restored
    with torch.no_grad():
        net.eval()
        logits = net(x)
    torch.testing.assert_close(net.head(f), logits, rtol=1e-4, atol=1e-5)  # what the head sees
    both = domain.features(net, x, layers=2)
    assert tuple(both.shape) == (5, 128 + 256)
    torch.testing.assert_close(both[:, 128:], f)
    with pytest.raises(ValueError, match="layers"):
        domain.features(net, x, layers=5)
