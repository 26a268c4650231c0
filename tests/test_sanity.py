"""sanity.py: cascading randomisation changes a GradCAM map, not an edge detector's; SSIM and rank correlation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from cxrdemo.diagnosis import sanity
from cxrdemo.views.checks import sanity_sentence
from cxrdemo.errors import ConfigError


def _image(make, seed: int = 21) -> torch.Tensor:
    return torch.from_numpy(make(np.random.default_rng(seed), True)[0])[None]


def edge_detector(model, image_u8: torch.Tensor, target: int) -> np.ndarray:
    """A 'method' that ignores the model: the Sobel gradient magnitude of the image, scaled to [0, 1]."""
    img = image_u8[0].numpy().astype(np.float64)
    mag = np.hypot(ndimage.sobel(img, 0), ndimage.sobel(img, 1))
    return (mag / mag.max()).astype(np.float32)


def test_randomising_the_model_changes_its_gradcam_map(patch_model, make_patch_image):
    check = sanity.cascading_randomisation(patch_model, _image(make_patch_image), "GradCAM", target_class=1)
    assert [s.randomised for s in check.steps] == ["head", "head + block4", "head + block4 + block3",
                                                   "head + block4 + block3 + block2",
                                                   "head + block4 + block3 + block2 + block1"]
    rs = [s.spearman for s in check.steps]
    # (the patch model learnt only its head: its trunk is random already, yet each new draw of it moves the map)
    assert rs[0] < 0.9 and max(rs[1:]) < 0.3 and check.final_spearman < sanity.SIMILAR, rs
    assert min(s.ssim for s in check.steps) < 0.5
    assert not check.explains_the_image and "changes the GradCAM map" in sanity_sentence(check)
    assert check.original.shape == check.steps[0].cam.shape == (sanity.STRIP_SIZE, sanity.STRIP_SIZE)


def test_a_map_that_ignores_the_model_does_not_change(patch_model, make_patch_image):
    check = sanity.cascading_randomisation(patch_model, _image(make_patch_image), edge_detector, target_class=1)
    assert check.method == "edge_detector" and len(check.steps) == 5
    assert all(s.spearman > 0.999 and s.ssim > 0.999 for s in check.steps)
    assert check.explains_the_image and "explaining the image, not the model" in sanity_sentence(check)
    assert check.to_dict()["steps"][0]["randomised"] == "head"


def test_the_shared_model_is_left_untouched(patch_model, make_patch_image):
    before = {k: v.clone() for k, v in patch_model.net.state_dict().items()}
    sanity.cascading_randomisation(patch_model, _image(make_patch_image), "GradCAM", target_class=1)
    after = patch_model.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in patch_model.net.parameters())


def test_an_unknown_method_is_a_config_error(patch_model, make_patch_image):
    with pytest.raises(ConfigError, match="Unknown heatmap method"):
        sanity.cascading_randomisation(patch_model, _image(make_patch_image), "Magic")


def test_ssim_values():
    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.random((48, 48)), 2)
    a = (a - a.min()) / np.ptp(a)
    assert sanity.ssim(a, a) == pytest.approx(1.0)
    b = rng.random((48, 48))
    assert sanity.ssim(a, b) == pytest.approx(sanity.ssim(b, a)) and sanity.ssim(a, b) < 0.3
    # two flat maps: only the luminance term is left, (2xy + C1) / (x^2 + y^2 + C1)
    c1 = 0.01 ** 2
    assert sanity.ssim(np.full((20, 20), 0.2), np.full((20, 20), 0.6)) == pytest.approx(
        (2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1))
    assert sanity.ssim(a, 0.5 * a) < sanity.ssim(a, 0.9 * a) < 1.0
    with pytest.raises(ValueError):
        sanity.ssim(a, a[:10])


def test_rank_correlation():
    a = np.arange(100.0).reshape(10, 10)
    assert sanity.rank_correlation(a, a ** 3) == pytest.approx(1.0)  # ranks, not values
    assert sanity.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert sanity.rank_correlation(a, np.zeros_like(a)) == 0.0  # a flat map ranks nothing
