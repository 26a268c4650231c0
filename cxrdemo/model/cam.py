"""The one CAM runner: pytorch-grad-cam's classes on a network, for Diagnosis, probes, the error gallery and the
scorecard alike.

Speed, without changing what the library computes:
- autograd starts at the target layer (a forward hook makes its output require a gradient), so no parameter needs
  a gradient and the backward pass crosses only the layers between the target layer and the logits;
- when the target layer's output is already known (the one-result forward kept it, or the trunk is frozen), every
  method that needs only that output and its gradient runs on the network's *suffix* (target layer -> logits) fed
  with it: the trunk is not run again. ScoreCAM masks the input image and always runs the whole network.
The library's maps are min-max scaled and resized to the input; the suffix path resizes the map the same way
(OpenCV bilinear, then the library's own scaling), so both paths give the same map (tests/test_cam.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from cxrdemo.errors import CxrError
from cxrdemo.model import backbones
from cxrdemo.model.autograd import parameters_without_grad

NEEDS_INPUT = frozenset({"ScoreCAM"})  # methods that perturb the input image: no suffix path
SCORECAM_BATCH = 32  # ScoreCAM's masked images per forward pass (the library default is 16)


def target_layer(net: backbones.Net) -> torch.nn.Module:
    """The layer every heatmap of this network looks at."""
    return backbones.cam_target_layer(net)


def _grad_from_here(module: torch.nn.Module, args, output):
    """Forward hook: the target layer's output is where autograd starts (nothing before it needs gradients)."""
    if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and not output.requires_grad:
        return output.requires_grad_()
    return None


@contextlib.contextmanager
def keep_activations(net: backbones.Net) -> Iterator[list[torch.Tensor]]:
    """Collect the target layer's outputs (detached copies, in call order) while the block runs."""
    found: list[torch.Tensor] = []
    hook = target_layer(net).register_forward_hook(lambda m, a, out: found.append(out.detach().float().clone()))
    try:
        yield found
    finally:
        hook.remove()


def suffix(net: backbones.Net) -> torch.nn.Sequential | None:
    """Target layer -> logits as a network of its own (an Identity standing for the target layer), or None when
    the target layer is not a direct child of the trunk's last stage."""
    layer, last = target_layer(net), net.trunk[-1]
    children = list(last.children()) if isinstance(last, torch.nn.Sequential) else []
    if not any(c is layer for c in children):
        return None
    rest = children[next(i for i, c in enumerate(children) if c is layer) + 1:]
    return torch.nn.Sequential(torch.nn.Identity(), *rest, net.pool, net.head)


def _scale(maps: np.ndarray, size: int) -> np.ndarray:
    """The library's last steps for maps computed at the target layer's resolution: resize, then min-max scale."""
    import cv2
    from pytorch_grad_cam.utils.image import scale_cam_image

    big = np.stack([cv2.resize(np.float32(m), (size, size)) for m in maps])
    return scale_cam_image(big)


@contextlib.contextmanager
def _counted(net: torch.nn.Module, layer: torch.nn.Module, n: int,
             progress: Callable[[float], None] | None) -> Iterator[None]:
    """Report the share of ScoreCAM's forward passes done: one pass of the `n` images, then one masked image per
    feature map of the target layer and image (counted by hooks: the library is not changed)."""
    if progress is None:
        yield
        return
    seen = {"maps": 0, "images": 0}

    def on_layer(_m, _a, out):
        seen["maps"] = seen["maps"] or int(out.shape[1])

    def on_net(_m, args, _out):
        seen["images"] += int(args[0].shape[0])
        if seen["maps"]:
            progress(min(1.0, seen["images"] / (n * (seen["maps"] + 1))))

    hooks = [layer.register_forward_hook(on_layer), net.register_forward_hook(on_net)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def run(net: backbones.Net, x: torch.Tensor, cam_class: type, targets: Sequence[Any] | None, *,
        activations: torch.Tensor | None = None, method: str = "",
        progress: Callable[[float], None] | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """(maps N x S x S float32 in [0, 1], logits N x K) of one CAM method on a normalised batch `x`.

    `targets`: one pytorch-grad-cam target per image, or None (each image's highest-scoring class).
    `activations`: the target layer's output for `x`, when known: the suffix path (see the module's docstring).
    `progress`: called with the share done (0-1) as ScoreCAM's batches pass (from the computing thread).
    The network's training flag and its parameters' gradient flags are restored; the library's hooks are released.
    """
    part = suffix(net) if activations is not None and method not in NEEDS_INPUT else None
    model, layer, inputs = (net, target_layer(net), x) if part is None else (part, part[0], activations)
    was_training = net.training
    with torch.inference_mode(False), torch.enable_grad(), parameters_without_grad(net):
        inputs = inputs.clone()  # made here: a caller's inference_mode must not leak into the input
        net.eval()
        hook = layer.register_forward_hook(_grad_from_here, prepend=True)  # before the library's own hooks
        maps = None
        try:
            with cam_class(model=model, target_layers=[layer]) as cam, _counted(
                    model, layer, int(inputs.shape[0]), progress if method in NEEDS_INPUT else None):
                if method == "ScoreCAM":
                    cam.batch_size = SCORECAM_BATCH
                maps = cam(input_tensor=inputs, targets=None if targets is None else list(targets))
                logits = cam.outputs.detach().float()
        finally:
            hook.remove()
            net.train(was_training)
    if maps is None:  # the library's context manager swallows IndexError: say so instead of failing later
        raise CxrError(f"The {method or cam_class.__name__} heatmap could not be computed for this model.")
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    if part is not None:
        maps = _scale(maps, int(x.shape[-1]))
    return np.clip(maps, 0.0, 1.0), logits
