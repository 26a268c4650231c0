"""The in-domain check over several trunk stages: one description per stage, each stage's distance divided by its
validation quantile, combined (max or sum), the combined cut-off chosen on validation; older one-stage records read
and score as before; the app's one forward pass scores what the fitting scored."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from cxrdemo.errors import RunError
from cxrdemo.model import domain
from cxrdemo.model.domain import DomainRecord, StagedDomainRecord, fit_domain, fit_stages, read_record, score_domain

WIDTHS = [4, 6, 8]


def stages(rng: np.random.Generator, n: int, shift: tuple[float, ...] = (0, 0, 0),
           widths: list[int] = WIDTHS) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated features of three 'stages' (two classes each, class means apart), `shift` added per stage."""
    y = np.arange(n) % 2
    parts = []
    for w, s in zip(widths, shift):
        centre = np.where(y[:, None] == 1, 3.0, 0.0) * np.ones(w)
        # the shift alternates in sign across a stage's features: away from both class means, not from one to the other
        parts.append(centre + rng.normal(size=(n, w)) * np.linspace(0.5, 2, w) + s * (-1.0) ** np.arange(w))
    return np.concatenate(parts, 1).astype(np.float32), y


@pytest.mark.parametrize("combine", domain.COMBINES)
def test_each_stage_is_normalised_by_its_validation_quantile_and_the_cutoff_keeps_the_quantile(combine):
    rng = np.random.default_rng(0)
    (x, y), (v, _) = stages(rng, 2000), stages(rng, 1000)
    rec = fit_stages(x, y, v, WIDTHS, quantile=0.99, stage_quantile=0.95, combine=combine, transform="none")
    assert rec.layers == 3 and rec.feature_dim == 18 and rec.n_train == 2000 and rec.n_val == 1000
    cols = np.cumsum([0, *WIDTHS])
    per = []
    for part, a, b in zip(rec.parts, cols, cols[1:]):
        d = score_domain(part, v[:, a:b])
        assert np.mean(d <= part.cutoff) == pytest.approx(0.95, abs=0.002)  # the stage's own scale
        per.append(d / part.cutoff)
    expected = np.max(per, 0) if combine == "max" else np.sum(per, 0)
    assert np.allclose(score_domain(rec, v), expected, rtol=1e-5)
    assert np.mean(score_domain(rec, v) <= rec.cutoff) == pytest.approx(0.99, abs=0.002)
    assert rec.val_scores is not None and len(rec.val_scores) == 1000
    assert np.all(np.diff(rec.val_scores.numpy()) >= 0)  # sorted: a histogram's input
    assert np.quantile(rec.val_scores.numpy(), 0.99) == pytest.approx(rec.cutoff, rel=1e-4)


def test_a_shift_in_one_narrow_stage_is_caught_where_one_description_of_all_stages_drowns_it():
    # A narrow early stage beside a wide last one (as 32 channels beside 512): in one joint distance the wide
    # stage's own spread swamps a shift of the narrow one; normalised per stage, the shift stands out.
    rng = np.random.default_rng(1)
    widths = [4, 6, 120]
    (x, y), (v, _) = stages(rng, 3000, widths=widths), stages(rng, 1000, widths=widths)
    shifted, _ = stages(rng, 500, shift=(2.0, 0, 0), widths=widths)  # only the first, narrowest stage moves
    staged = fit_stages(x, y, v, widths, quantile=0.99, transform="none")
    joint = fit_domain(x, y, v, quantile=0.99, layers=3, transform="none")
    caught = np.mean(score_domain(staged, shifted) > staged.cutoff)
    missed = np.mean(score_domain(joint, shifted) > joint.cutoff)
    assert caught > 0.8 and missed < 0.25  # measured: 90% against 11%


def test_a_staged_record_travels_in_model_pt_and_scores_the_same():
    rng = np.random.default_rng(2)
    (x, y), (v, _) = stages(rng, 400), stages(rng, 200)
    rec = fit_stages(x, y, v, WIDTHS, combine="sum")
    buf = io.BytesIO()
    torch.save(rec.to_dict(), buf)
    buf.seek(0)
    back = read_record(torch.load(buf, weights_only=True))
    assert isinstance(back, StagedDomainRecord) and back.combine == "sum" and back.layers == 3
    assert back.transform == "sqrt" and back.cutoff == rec.cutoff and torch.equal(back.val_scores, rec.val_scores)
    assert np.array_equal(score_domain(back, v), score_domain(rec, v))
    d = rec.to_dict()
    assert d["layers"] == 3 and d["transform"] == "sqrt" and d["method"] == domain.METHOD_STAGES
    assert domain.record_bytes(rec) > 0


def test_an_older_one_stage_record_reads_and_scores_unchanged():
    rng = np.random.default_rng(3)
    (x, y), (v, _) = stages(rng, 400), stages(rng, 200)
    old = fit_domain(x[:, -8:], y, v[:, -8:])
    back = read_record(old.to_dict())
    assert type(back) is DomainRecord and back.layers == 1
    assert np.array_equal(score_domain(back, v[:, -8:]), score_domain(old, v[:, -8:]))


@pytest.mark.parametrize("damage", ["no-parts", "bad-combine", "zero-scale", "missing"])
def test_a_damaged_staged_record_is_refused_with_a_sentence(damage):
    rng = np.random.default_rng(4)
    (x, y), (v, _) = stages(rng, 200), stages(rng, 100)
    d = fit_stages(x, y, v, WIDTHS).to_dict()
    if damage == "no-parts":
        d["parts"] = []
    elif damage == "bad-combine":
        d["combine"] = "mean"
    elif damage == "zero-scale":
        d["parts"][0]["cutoff"] = 0.0
    else:
        del d["cutoff"]
    with pytest.raises(RunError, match="in-domain description"):
        read_record(d)


def test_fit_stages_checks_its_widths_and_combine():
    rng = np.random.default_rng(5)
    (x, y), (v, _) = stages(rng, 200), stages(rng, 100)
    with pytest.raises(ValueError, match="do not add up"):
        fit_stages(x, y, v, [4, 6])
    with pytest.raises(ValueError, match="combine"):
        fit_stages(x, y, v, WIDTHS, combine="mean")
