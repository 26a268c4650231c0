"""Autograd switches shared by the heatmap code of prediction and of per-epoch probes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def parameters_without_grad(net: torch.nn.Module) -> Iterator[None]:
    """No parameter gradients (a CAM needs only activation gradients); each flag is restored afterwards."""
    params = list(net.parameters())
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)
