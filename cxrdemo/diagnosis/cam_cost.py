"""How long a heatmap will take before it starts: one batch timed on the loaded model, estimated by runs/durations."""

from __future__ import annotations

import time

import torch

from cxrdemo.model.cam import SCORECAM_BATCH
from cxrdemo.diagnosis.predict import LoadedModel
from cxrdemo.model import backbones
from cxrdemo.runs import durations

SLOW_METHODS = durations.SLOW_CAM_METHODS


def expected_seconds(model: LoadedModel, method: str) -> float | None:
    """Seconds `method` should take for one image with `model` on this machine (None: fast, not worth a wait)."""
    if method not in SLOW_METHODS:
        return None
    net, layer = model.net, backbones.cam_target_layer(model.net)
    net.eval()
    size = model.preprocessing.img_size
    channels: list[int] = []
    hook = layer.register_forward_hook(lambda _m, _a, out: channels.append(int(out.shape[1])))
    try:
        with model.lock, torch.inference_mode():
            x = torch.zeros(SCORECAM_BATCH, 3, size, size)
            net(x[:1])  # warm-up, and the number of feature maps
            start = time.perf_counter()
            net(x)
            batch = time.perf_counter() - start
    finally:
        hook.remove()
    return durations.cam_seconds(method, batch, channels[0] if channels else 512, SCORECAM_BATCH)
