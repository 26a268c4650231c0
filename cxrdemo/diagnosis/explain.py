"""Heatmaps through pytorch-grad-cam, on the one result of an image: the class explained is the result's verdict
(or a class the user picks); the verdict is never computed again here.

The CAM runner is model/cam (shared with the probes); the fast methods run on the layers after the CAM layer only,
fed with the output the result's forward pass kept, so a heatmap costs a fraction of a forward pass.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cxrdemo.diagnosis.predict import LoadedModel
from cxrdemo.diagnosis.result import ImageResult
from cxrdemo.errors import ConfigError
from cxrdemo.model import cam as cam_runner

CAM_METHODS: dict[str, type] = {
    "GradCAM": GradCAM,
    "GradCAM++": GradCAMPlusPlus,
    "EigenCAM": EigenCAM,
    "ScoreCAM": ScoreCAM,
    "LayerCAM": LayerCAM,
}
CLASS_AGNOSTIC = frozenset({"EigenCAM"})


@dataclass(frozen=True)
class Heatmap:
    """One method's map of one image for one class."""

    method: str
    target: int  # the class the heatmap explains
    cam: np.ndarray  # HxW float32 in [0, 1] at the model's input size

    @property
    def flat(self) -> bool:
        """True when no region raised the explained class's score (the map is all zero)."""
        return float(self.cam.max(initial=0.0)) <= 1e-6

    @property
    def class_specific(self) -> bool:
        """False for methods whose map does not depend on the explained class."""
        return self.method not in CLASS_AGNOSTIC


def method_class(method: str) -> type:
    """The pytorch-grad-cam class called `method`, or a ConfigError listing the known ones."""
    try:
        return CAM_METHODS[method]
    except KeyError:
        raise ConfigError(f"Unknown heatmap method {method!r}. Choose one of: {', '.join(CAM_METHODS)}.") from None


def check_class(model: LoadedModel, target: int) -> int:
    """A class index this model knows, or a ConfigError naming its classes."""
    if not 0 <= int(target) < len(model.classes):
        raise ConfigError(f"Class {target} does not exist: this model knows {', '.join(model.classes)}.")
    return int(target)


def explain(model: LoadedModel, image_u8: torch.Tensor, method: str, target: int, *,
            activations: torch.Tensor | None = None, cam_class: type | None = None,
            progress: Callable[[float], None] | None = None) -> Heatmap:
    """The `method` map of class `target` for one prepared uint8 1xSxS image (`activations`: its CAM-layer output,
    when known). `cam_class`: a pytorch-grad-cam class used instead of the registry's (e.g. RandomCAM).
    `progress`: told the share done of a slow method (ScoreCAM), from the computing thread."""
    cam_class = cam_class or method_class(method)
    k = check_class(model, target)
    x = model.preprocessing.normalize(image_u8)
    # One computation at a time per model: the library's hooks sit on the shared (cached) network.
    with model.lock:
        maps, _ = cam_runner.run(model.net, x, cam_class, [ClassifierOutputTarget(k)], activations=activations,
                                 method=method, progress=progress)
    return Heatmap(method=method, target=k, cam=maps[0])


def heatmap(model: LoadedModel, res: ImageResult, method: str = "GradCAM", target: int | None = None, *,
            progress: Callable[[float], None] | None = None) -> Heatmap:
    """The heatmap of one result: its verdict explained, or class `target` (`progress`: see explain)."""
    return explain(model, res.image, method, res.predicted if target is None else target,
                   activations=res.activations, progress=progress)


def overlay(image_grey01: np.ndarray, cam: np.ndarray, opacity: float = 0.4) -> np.ndarray:
    """The heatmap blended over the image at the image's own resolution: HxWx3 uint8 RGB (opacity 0 = image)."""
    import cv2

    img = np.asarray(image_grey01, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D greyscale image, got shape {img.shape}")
    a = float(np.clip(opacity, 0.0, 1.0))
    h, w = img.shape
    cam_full = cv2.resize(np.asarray(cam, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = heat_colours(cam_full)
    grey = np.clip(img, 0.0, 1.0)[..., None] * 255.0
    out = (1.0 - a) * grey + a * heat.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def heat_colours(cam: np.ndarray) -> np.ndarray:
    """A [0, 1] map in the overlay's colours (OpenCV's JET): HxWx3 uint8 RGB."""
    import cv2

    return cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255 + 0.5), cv2.COLORMAP_JET)[..., ::-1]


def to_png_bytes(rgb: np.ndarray) -> bytes:
    """An HxW or HxWx3 uint8 array as PNG file bytes (in memory)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()
