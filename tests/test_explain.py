"""explain.py: one forward for prediction + CAM, heatmaps that find the evidence, a shared model left untouched."""

from __future__ import annotations

import dataclasses
import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from types import SimpleNamespace

from cxrdemo.diagnosis import explain, result
from cxrdemo.diagnosis.predict import LoadedModel, model_input, predict_probs
from cxrdemo.errors import ConfigError
from cxrdemo.model import backbones
from cxrdemo.model.checkpoint import Decision, Preprocessing
from cxrdemo.views import words


def _images(make, n: int, seed: int, with_patch: bool):
    rng = np.random.default_rng(seed)
    return [make(rng, with_patch) for _ in range(n)]


def _u8(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img)[None]


def _explain(model: LoadedModel, x: torch.Tensor, method: str = "GradCAM", target_class: int | None = None):
    """The page's two steps: the image's one result, then the heatmap of its verdict (or of `target_class`)."""
    r = result.assess_image(model, x)
    h = explain.heatmap(model, r, method, target_class)
    return SimpleNamespace(probs=r.probs, predicted=r.predicted, target=h.target, cam=h.cam, flat=h.flat,
                           method=h.method, class_specific=h.class_specific)


def _scratch(name: str, size: int) -> LoadedModel:
    torch.manual_seed(0)
    net = backbones.build_backbone(name, 2).eval()
    net.requires_grad_(False)
    return LoadedModel(net, ("NORMAL", "PNEUMONIA"), Preprocessing(size), Decision(), f"scratch-{name}", Path("."))


def test_cam_shape_range_and_the_same_probabilities_as_predict_probs(patch_model, make_patch_image):
    imgs = _images(make_patch_image, 3, 1, True) + _images(make_patch_image, 3, 2, False)
    x = torch.from_numpy(np.stack([im for im, _ in imgs]))[:, None]
    expected = predict_probs(patch_model, x)
    for (img, box), p in zip(imgs, expected):
        res = _explain(patch_model, _u8(img))
        assert res.cam.shape == (64, 64) and res.cam.dtype == np.float32
        assert 0.0 <= res.cam.min() and res.cam.max() <= 1.0
        if box:  # on a blank image nothing raises the 'blank' score: an empty map is the right answer there
            assert res.cam.max() > 0.5 and not res.flat
        assert res.flat == (res.cam.max() <= 1e-6)
        np.testing.assert_allclose(res.probs, p, atol=1e-5)
        assert res.predicted == int(patch_model.decide(p)[0]) == res.target


def test_gradcam_finds_the_bright_patch(patch_model, make_patch_image):
    positives = _images(make_patch_image, 20, 3, True)
    negatives = _images(make_patch_image, 20, 4, False)
    peak_hits, hot_share = 0, []
    for img, (top, left, side) in positives:
        res = _explain(patch_model, _u8(img))
        assert res.predicted == 1
        cam = res.cam
        # one cell of the 8x8 feature map is 8 px: count half a cell around the square as "on the patch"
        near = np.zeros(cam.shape, bool)
        near[max(0, top - 4):top + side + 4, max(0, left - 4):left + side + 4] = True
        py, px = np.unravel_index(int(cam.argmax()), cam.shape)
        peak_hits += bool(near[py, px])
        hot = cam >= np.quantile(cam, 0.95)  # the hottest 5% of the map
        hot_share.append((hot & near).sum() / hot.sum())
    assert peak_hits >= 18, f"heatmap peak on the patch for only {peak_hits}/20 images"
    # by chance the hottest 5% would overlap the ~12% of the image around the patch by ~0.12
    assert np.mean(hot_share) > 0.5 and sum(s > 0.3 for s in hot_share) >= 15, np.round(hot_share, 2)
    blank = predict_probs(patch_model, torch.from_numpy(np.stack([img for img, _ in negatives]))[:, None])
    assert (patch_model.decide(blank) == 0).sum() >= 18


def test_the_explained_class_changes_the_map(patch_model, make_patch_image):
    (img, _), = _images(make_patch_image, 1, 5, True)
    for_patch = _explain(patch_model, _u8(img), target_class=1)
    for_blank = _explain(patch_model, _u8(img), target_class=0)
    assert (for_patch.target, for_blank.target) == (1, 0)
    assert np.abs(for_patch.cam - for_blank.cam).mean() > 0.1
    np.testing.assert_allclose(for_patch.probs, for_blank.probs, atol=1e-6)  # the prediction does not change
    np.testing.assert_allclose(_explain(patch_model, _u8(img)).cam, for_patch.cam, atol=1e-6)


def test_default_target_follows_the_saved_threshold(patch_model, make_patch_image):
    (img, _), = _images(make_patch_image, 1, 6, False)
    p1 = float(predict_probs(patch_model, _u8(img)[None])[0, 1])
    assert p1 < 0.5  # argmax says blank...
    strict = dataclasses.replace(patch_model, decision=Decision("val", p1 / 2))  # ...the saved threshold says patch
    res = _explain(strict, _u8(img))
    assert res.predicted == 1 and res.target == 1
    np.testing.assert_allclose(res.cam, _explain(patch_model, _u8(img), target_class=1).cam, atol=1e-6)
    assert _explain(patch_model, _u8(img)).target == 0


def test_explain_works_when_called_under_inference_mode(patch_model, make_patch_image):
    (img, _), = _images(make_patch_image, 1, 10, True)
    with torch.inference_mode():
        res = _explain(patch_model, _u8(img))
    np.testing.assert_allclose(res.cam, _explain(patch_model, _u8(img)).cam, atol=1e-6)
    assert res.cam.max() > 0.5


@pytest.mark.parametrize("method", list(explain.CAM_METHODS))
def test_every_cam_method_runs(patch_model, make_patch_image, method):
    (img, _), = _images(make_patch_image, 1, 7, True)
    res = _explain(patch_model, _u8(img), method)
    assert res.cam.shape == (64, 64) and 0.0 <= res.cam.min() <= res.cam.max() <= 1.0
    assert res.cam.max() > 0.5 and res.method == method
    np.testing.assert_allclose(res.probs, predict_probs(patch_model, _u8(img)[None])[0], atol=1e-5)
    assert res.predicted == res.target == 1
    assert res.class_specific == (method != "EigenCAM")
    assert issubclass(explain.method_class(method), object) and words.CAM_NOTES[method]


@pytest.mark.parametrize("name", backbones.backbone_names())
def test_gradcam_works_on_every_backbone_and_leaves_the_model_as_it_was(name):
    size = 80 if name == "inception_v3" else 64  # inception_v3 needs at least 75 px
    model = _scratch(name, size)
    params = list(model.net.parameters())
    for i, p in enumerate(params):  # a mix, as a partly frozen network would have
        p.requires_grad_(i % 3 == 0)
    before = [p.requires_grad for p in params]
    layer = backbones.cam_target_layer(model.net)
    x = torch.randint(0, 256, (1, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    res = _explain(model, x)
    assert res.cam.shape == (size, size) and np.isfinite(res.cam).all()
    assert 0.0 <= res.cam.min() <= res.cam.max() <= 1.0
    np.testing.assert_allclose(res.probs, predict_probs(model, x[None])[0], atol=1e-5)
    assert [p.requires_grad for p in params] == before
    assert all(p.grad is None for p in params)  # no parameter gradient was ever computed
    assert not layer._forward_hooks and not layer._backward_hooks  # every hook released
    assert not model.net.training


def test_backward_stops_at_the_target_layer():
    model = _scratch("resnet18", 64)
    seen: list[bool] = []
    handle = model.net.trunk[3].register_forward_hook(lambda m, a, out: seen.append(out.requires_grad))  # layer3
    x = torch.randint(0, 256, (1, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    explain.explain(model, x, "GradCAM", 0)  # the whole network (no kept activations)
    assert seen == [False]  # autograd starts after layer3: nothing before the target layer is differentiated
    # the naive use (every parameter trainable) builds the graph through the whole network
    model.net.requires_grad_(True)
    with GradCAM(model=model.net, target_layers=[backbones.cam_target_layer(model.net)]) as cam:
        cam(input_tensor=model_input(model, x), targets=[ClassifierOutputTarget(0)])
    model.net.requires_grad_(False)
    handle.remove()
    assert seen == [False, True]


def test_unknown_method_or_class_is_a_sentence(patch_model):
    x = torch.zeros((1, 64, 64), dtype=torch.uint8)
    with pytest.raises(ConfigError, match="GradCAM, GradCAM\\+\\+, EigenCAM, ScoreCAM, LayerCAM"):
        _explain(patch_model, x, "SaliencyMagic")
    with pytest.raises(ConfigError, match="blank, patch"):
        _explain(patch_model, x, target_class=2)


def test_concurrent_explanations_on_one_shared_model_do_not_mix(patch_model, make_patch_image):
    imgs = [img for img, _ in _images(make_patch_image, 2, 8, True) + _images(make_patch_image, 2, 9, False)]
    alone = [_explain(patch_model, _u8(img)).cam for img in imgs]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = _explain(patch_model, _u8(imgs[i % 4])).cam

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        np.testing.assert_allclose(results[i], alone[i % 4], atol=1e-6)


def test_overlay_is_at_the_original_resolution():
    grey = np.tile(np.linspace(0, 1, 150, dtype=np.float32), (100, 1))  # 100 x 150, not square
    cam = np.zeros((64, 64), np.float32)
    cam[:, 32:] = 1.0  # right half hot
    plain = explain.overlay(grey, cam, 0.0)
    assert plain.shape == (100, 150, 3) and plain.dtype == np.uint8
    np.testing.assert_array_equal(plain[..., 0], np.round(grey * 255).astype(np.uint8))
    np.testing.assert_array_equal(plain[..., 0], plain[..., 2])
    heat = explain.overlay(grey, cam, 1.0).astype(int)
    assert heat[50, 140, 0] > 100 and heat[50, 140, 2] < 50  # JET: hot is red
    assert heat[50, 5, 2] > 100 and heat[50, 5, 0] < 50  # cold is blue
    half = explain.overlay(grey, cam, 0.5).astype(int)
    assert abs(half[50, 140, 0] - (plain[50, 140, 0] + heat[50, 140, 0]) / 2) <= 1


def test_png_bytes_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    png = explain.to_png_bytes(rgb)
    assert png.startswith(b"\x89PNG")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), rgb)
