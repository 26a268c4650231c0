"""Randomise and look again: cascading randomisation of the model (Adebayo et al., NeurIPS 2018).

On a deep copy of the network, the registry's freeze groups are re-initialised from the top down (head first, then
the last trunk stage, ... down to the stem), cumulatively. After each step the heatmap of the same image and class is
computed again and compared with the original map: Spearman rank correlation (scipy) and SSIM. A method whose map
barely changes while the model is destroyed is explaining the image, not the model.

SSIM: neither scikit-image nor torchmetrics is installed, so `ssim` below is the standard single-scale SSIM
(Wang et al. 2004) with an 11-tap Gaussian window (sigma 1.5, K1 0.01, K2 0.03, data range 1) via scipy.ndimage,
matching skimage's `structural_similarity(gaussian_weights=True, use_sample_covariance=False)`.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch
from scipy import ndimage, stats

from cxrdemo.diagnosis import explain as explain_mod
from cxrdemo.diagnosis.predict import LoadedModel
from cxrdemo.model import backbones

CamFn = Callable[[LoadedModel, torch.Tensor, int], np.ndarray]  # (model, uint8 image, class) -> HxW map in [0, 1]
STRIP_SIZE = 56  # side of the low-resolution maps returned for a strip of thumbnails
SIMILAR = 0.5  # a rank correlation at or above this with every layer random = "barely changes"


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5, data_range: float = 1.0) -> float:
    """Mean structural similarity of two 2-D maps (Gaussian window; 1 = identical)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim needs two 2-D maps of one shape, got {a.shape} and {b.shape}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    blur = lambda img: ndimage.gaussian_filter(img, sigma, truncate=3.5, mode="reflect")  # noqa: E731 (11 taps)
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two maps' pixels; 0 when either map is flat (a flat map ranks nothing)."""
    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(stats.spearmanr(a, b).statistic)


@dataclass(frozen=True)
class SanityStep:
    """One step of the cascade: which groups are random so far, the map, its similarity to the original."""

    randomised: str  # e.g. "head + block5": every group re-initialised so far
    cam: np.ndarray  # STRIP_SIZE x STRIP_SIZE float32 thumbnail
    spearman: float
    ssim: float


@dataclass(frozen=True)
class SanityCheck:
    """The original map and one step per re-initialised group, head first."""

    method: str
    target: int
    original: np.ndarray  # thumbnail
    steps: tuple[SanityStep, ...]

    @property
    def final_spearman(self) -> float:
        return self.steps[-1].spearman if self.steps else 1.0

    @property
    def explains_the_image(self) -> bool:
        """True when the map still correlates with the original once every layer is random."""
        return self.final_spearman >= SIMILAR

    def to_dict(self, maps: bool = False) -> dict:
        """Numbers (and with maps=True the thumbnails as nested lists) for JSON."""
        rows = [{"randomised": s.randomised, "spearman": s.spearman, "ssim": s.ssim,
                 **({"cam": np.round(s.cam, 3).tolist()} if maps else {})} for s in self.steps]
        return {"method": self.method, "target": self.target, "steps": rows, "final_spearman": self.final_spearman,
                "explains_the_image": self.explains_the_image}


def _method_cam(method: str) -> CamFn:
    def cam(model: LoadedModel, image_u8: torch.Tensor, target: int) -> np.ndarray:
        return explain_mod.explain(model, image_u8, method, target).cam
    cam.__name__ = method
    return cam


def _reinitialise(group: torch.nn.Module) -> None:
    """Every layer of the group back to its framework initialisation (batch-norm statistics included)."""
    for module in group.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()


def _thumb(cam: np.ndarray) -> np.ndarray:
    return cv2.resize(np.asarray(cam, dtype=np.float32), (STRIP_SIZE, STRIP_SIZE), interpolation=cv2.INTER_AREA)


def cascading_randomisation(model: LoadedModel, image_u8: torch.Tensor, method: str | CamFn = "GradCAM",
                            target_class: int = 0, seed: int = 0) -> SanityCheck:
    """Maps of the same image and class as the model's groups are re-initialised, head first, on a copy."""
    if isinstance(method, str):
        explain_mod.method_class(method)  # an unknown name is a ConfigError before any work
        cam_fn, name = _method_cam(method), method
    else:
        cam_fn, name = method, getattr(method, "__name__", "custom")
    original = cam_fn(model, image_u8, int(target_class))
    with model.lock:
        net = copy.deepcopy(model.net)  # the shared, cached network is never touched
    # A private LoadedModel around the copy: its own lock, everything else (classes, decision rule) the same.
    work = dataclasses.replace(model, net=net, lock=threading.RLock())
    stage_names = backbones.get_spec(net.backbone).stage_names or tuple(f"stage{i}" for i in range(len(net.trunk)))
    names = [*stage_names[: len(net.trunk)], "head"]
    steps, done = [], []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for name_k, group in reversed(list(zip(names, net.groups()))):
            _reinitialise(group)
            group.requires_grad_(False)
            done.append(name_k)
            cam = cam_fn(work, image_u8, int(target_class))
            steps.append(SanityStep(" + ".join(done), _thumb(cam), rank_correlation(original, cam), ssim(original, cam)))
    return SanityCheck(name, int(target_class), _thumb(original), tuple(steps))
