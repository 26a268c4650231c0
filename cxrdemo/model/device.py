"""Where and how training computes: the device, the CPU threads, the mixed-precision policy."""

from __future__ import annotations

import contextlib
import os

import torch

from cxrdemo.errors import ConfigError
from cxrdemo.model import backbones


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


def choose_precision(precision: str, device: torch.device, backbone: str) -> torch.dtype | None:
    """The autocast dtype for training (None = plain float32).

    auto: bfloat16 where the hardware runs it natively and the backbone gains from it: CUDA GPUs with bf16,
    and CPUs with AMX for backbones of dense convolutions (2-3x faster per step, benchmarks/bench_precision.py);
    depthwise backbones (MobileNet, EfficientNet) gain nothing from bf16 on a CPU and stay float32.
    Weights, optimiser state and everything after training (threshold, test, prediction) stay float32.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if amx and backbones.get_spec(backbone).bf16 else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for a forward pass, or nothing when `dtype` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
