"""Grad-CAM and friends through pytorch-grad-cam: one forward gives the prediction and the heatmap.

Speed: the CAM's own forward pass is the prediction (no second forward), and autograd starts at the
target layer: no parameter needs a gradient, so the backward pass only crosses the few layers between
the target layer and the logits. For ResNet, DenseNet and EfficientNet that is the pool and the head.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM

from cxrdemo.diagnosis.predict import LoadedModel, model_input
from cxrdemo.errors import ConfigError, CxrError
from cxrdemo.model import backbones
from cxrdemo.model.autograd import parameters_without_grad

CAM_METHODS: dict[str, type] = {
    "GradCAM": GradCAM,
    "GradCAM++": GradCAMPlusPlus,
    "EigenCAM": EigenCAM,
    "ScoreCAM": ScoreCAM,
    "LayerCAM": LayerCAM,
}
CLASS_AGNOSTIC = frozenset({"EigenCAM"})
SCORECAM_BATCH = 32  # ScoreCAM's masked images per forward pass (the library default is 16)


@dataclass
class Explanation:
    """A prediction and a heatmap from the same forward pass."""

    probs: np.ndarray  # (num_classes,) softmax probabilities
    predicted: int  # by the model's own decision rule (saved threshold, else argmax)
    target: int  # the class the heatmap explains
    cam: np.ndarray  # HxW float32 in [0, 1] at the model's input size
    method: str = "GradCAM"

    @property
    def flat(self) -> bool:
        """True when no region raised the explained class's score (the map is all zero)."""
        return float(self.cam.max(initial=0.0)) <= 1e-6

    @property
    def class_specific(self) -> bool:
        """False for methods whose map does not depend on the explained class."""
        return self.method not in CLASS_AGNOSTIC


class _DecisionTarget:
    """The score to explain: a chosen class, or the class the model decides for this image.

    The decision is taken once, from the CAM's own forward output (`reference`), so that ScoreCAM's
    masked re-runs keep explaining the same class.
    """

    def __init__(self, model: LoadedModel, target_class: int | None, reference: Callable[[], torch.Tensor]) -> None:
        self.model, self.k, self.reference = model, target_class, reference

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.k is None:
            probs = torch.softmax(self.reference().detach().float().reshape(1, -1), 1).numpy()
            self.k = int(self.model.decide(probs)[0])
        return output[..., self.k]


def _grad_from_here(module: torch.nn.Module, args, output):
    """Forward hook: the target layer's output is where autograd starts (nothing before it needs gradients)."""
    if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and not output.requires_grad:
        return output.requires_grad_()
    return None


def method_class(method: str) -> type:
    """The pytorch-grad-cam class called `method`, or a ConfigError listing the known ones."""
    try:
        return CAM_METHODS[method]
    except KeyError:
        raise ConfigError(f"Unknown heatmap method {method!r}. Choose one of: {', '.join(CAM_METHODS)}.") from None


def explain(model: LoadedModel, image_u8: torch.Tensor, method: str = "GradCAM",
            target_class: int | None = None, *, cam_class: type | None = None) -> Explanation:
    """Prediction and heatmap for one uint8 1xSxS image (S = model.img_size) in one forward pass.

    `cam_class`: a pytorch-grad-cam class used instead of the registry's (e.g. RandomCAM as a baseline).
    """
    cam_class = cam_class or method_class(method)
    if target_class is not None and not 0 <= int(target_class) < len(model.classes):
        raise ConfigError(f"Class {target_class} does not exist: this model knows {', '.join(model.classes)}.")
    net = model.net
    layer = backbones.cam_target_layer(net)
    grey: np.ndarray | None = None
    # One computation at a time per model: the library's hooks sit on the shared (cached) network.
    with model.lock, torch.inference_mode(False), torch.enable_grad(), parameters_without_grad(net):
        x = model_input(model, image_u8)  # made here: a caller's inference_mode must not leak into the input
        was_training = net.training
        hook = layer.register_forward_hook(_grad_from_here, prepend=True)  # before the library's own hooks
        try:
            with cam_class(model=net, target_layers=[layer]) as cam:
                if cam_class is ScoreCAM:
                    cam.batch_size = SCORECAM_BATCH
                target = _DecisionTarget(model, None if target_class is None else int(target_class),
                                         lambda: cam.outputs[0])
                grey = cam(input_tensor=x, targets=[target])[0]
                logits = cam.outputs.detach().float()
        finally:
            hook.remove()
            net.train(was_training)
    if grey is None:  # the library's context manager swallows IndexError; say so instead of failing later
        raise CxrError(f"The {method} heatmap could not be computed for this model.")
    probs = torch.softmax(logits, 1)[0].numpy()
    predicted = int(model.decide(probs)[0])
    explained = target.k if target.k is not None else predicted
    cam_map = np.clip(np.nan_to_num(np.asarray(grey, dtype=np.float32)), 0.0, 1.0)
    return Explanation(probs=probs, predicted=predicted, target=int(explained), cam=cam_map, method=method)


def overlay(image_grey01: np.ndarray, cam: np.ndarray, opacity: float = 0.4) -> np.ndarray:
    """The heatmap blended over the image at the image's own resolution: HxWx3 uint8 RGB (opacity 0 = image)."""
    import cv2

    img = np.asarray(image_grey01, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D greyscale image, got shape {img.shape}")
    a = float(np.clip(opacity, 0.0, 1.0))
    h, w = img.shape
    cam_full = cv2.resize(np.asarray(cam, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.uint8(np.clip(cam_full, 0, 1) * 255 + 0.5), cv2.COLORMAP_JET)[..., ::-1]
    grey = np.clip(img, 0.0, 1.0)[..., None] * 255.0
    out = (1.0 - a) * grey + a * heat.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def to_png_bytes(rgb: np.ndarray) -> bytes:
    """An HxW or HxWx3 uint8 array as PNG file bytes (in memory)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()
