"""Where training computes: the device, the CPU threads, the autocast context (model/speed chooses the arithmetic)."""

from __future__ import annotations

import contextlib
import os

import torch

from cxrdemo.errors import ConfigError


def default_threads() -> int:
    """Cores this process may use (affinity-aware), shared by the concurrent jobs."""
    if os.environ.get("CXRDEMO_THREADS", "").isdigit() and int(os.environ["CXRDEMO_THREADS"]) > 0:
        return int(os.environ["CXRDEMO_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = max(1, int(os.environ.get("CXRDEMO_MAX_JOBS", "1") or 1))
    return max(1, cores // jobs)


def set_threads(n: int) -> int:
    """Set torch's intra-op threads (0 = choose); the loader runs in-process, so there is no oversubscription."""
    n = n or default_threads()
    torch.set_num_threads(n)
    return n


def choose_device() -> torch.device:
    """$CXRDEMO_DEVICE (cpu, cuda, cuda:1, ...), else the GPU when there is one, else the CPU."""
    env = os.environ.get("CXRDEMO_DEVICE", "").strip()
    try:
        device = torch.device(env) if env else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError:
        raise ConfigError(f"CXRDEMO_DEVICE={env!r} is not a device: use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"CXRDEMO_DEVICE={env!r} asks for a GPU, but this machine has no usable CUDA GPU.")
    return device


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for a forward pass, or nothing when `dtype` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
