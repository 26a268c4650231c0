"""model/cam: the suffix path (the result's kept CAM-layer output, the trunk not run again) draws the same maps as
the library run on the whole network, for every method that allows it, on the shipped model and scratch backbones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrdemo import paths
from cxrdemo.diagnosis import explain, predict, result
from cxrdemo.model import backbones, cam
from cxrdemo.model.checkpoint import Decision, Preprocessing

FAST = [m for m in explain.CAM_METHODS if m not in cam.NEEDS_INPUT]


@pytest.fixture(scope="module")
def demo_result():
    model = predict.load_model("demo")
    film = sorted((paths.PACKAGE_DIR / "demo_data" / "test" / "PNEUMONIA").glob("*"))[0]
    return model, result.assess(model, predict.read_radiograph(str(film), film.name))


@pytest.mark.parametrize("method", FAST)
def test_the_suffix_path_draws_the_full_networks_map(demo_result, method):
    model, res = demo_result
    assert res.activations is not None and cam.suffix(model.net) is not None
    for k in (0, 1):
        fast = explain.explain(model, res.image, method, k, activations=res.activations).cam
        full = explain.explain(model, res.image, method, k).cam
        assert fast.shape == full.shape == (224, 224)
        assert np.abs(fast - full).max() < 1e-4, method


def test_random_maps_through_the_suffix_match_too(demo_result):
    from pytorch_grad_cam import RandomCAM

    model, res = demo_result
    maps = []
    for acts in (res.activations, None):
        np.random.seed(3)
        maps.append(explain.explain(model, res.image, "RandomCAM", 1, cam_class=RandomCAM, activations=acts).cam)
    assert np.abs(maps[0] - maps[1]).max() < 1e-4


@pytest.mark.parametrize("name", ["cnn8", "resnet18", "densenet121"])
def test_scratch_backbones_agree_or_fall_back_to_the_full_network(name):
    torch.manual_seed(0)
    net = backbones.build_backbone(name, 2).eval().requires_grad_(False)
    model = predict.LoadedModel(net, ("A", "B"), Preprocessing(64), Decision(), name, Path("."))
    x = torch.randint(0, 256, (1, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    res = result.assess_image(model, x)
    fast = explain.heatmap(model, res, "GradCAM").cam
    full = explain.explain(model, res.image, "GradCAM", res.predicted).cam
    assert np.abs(fast - full).max() < 1e-4
