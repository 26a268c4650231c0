"""How a run computes fastest on the machine at hand: float32 or bfloat16 autocast, contiguous or channels-last.

Nothing here is decided from a table of machines: a short timed trial trains a copy of the run's own
network on random data of the run's batch shape in each candidate (one warm-up step each, then timed
rounds, interleaved so that all see the same background load), and the fastest wins. The trial costs
at most MAX_TRIAL_S or EPOCH_FRACTION of an epoch, whichever is less, and its answer is kept on disk
per (device model, backbone, image size, batch, frozen groups, threads, torch version), so "again"
and seed repeats reuse it. It never touches the run's weights (a deep copy trains) nor its random
state (saved and restored).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import platform
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrdemo import data, fileio
from cxrdemo.model.device import autocast
from cxrdemo.paths import cache_dir

MAX_TRIAL_S = 30.0
EPOCH_FRACTION = 0.10
TIMED_ROUNDS = 3  # after one warm-up step per candidate; the median decides
BF16_MARGIN = 1.05  # bfloat16 rounds the forward pass: it must be at least 5% faster to be chosen
TRIAL_VERSION = 1  # bump when the trial measures differently: older answers are then measured again
PENDING = "pending: timed during the run"  # too small for a trial before training: model/tuning times it between epochs


@dataclass(frozen=True)
class Candidate:
    """One way to compute: autocast to bfloat16 or not, channels-last or contiguous memory."""

    bf16: bool
    channels_last: bool

    @property
    def name(self) -> str:
        return ("bf16" if self.bf16 else "fp32") + ("-channels-last" if self.channels_last else "-contiguous")

    @classmethod
    def from_name(cls, name: str) -> "Candidate":
        """The candidate `name` spells (fp32-contiguous, bf16-channels-last, ...)."""
        return cls(name.startswith("bf16"), name.endswith("channels-last"))


@dataclass
class SpeedChoice:
    """The arithmetic and layout a run trains with, and how they were chosen."""

    bf16: bool
    channels_last: bool
    source: str  # measured | remembered | not measured (why)
    ratio: float | None = None  # reference step seconds / chosen step seconds (the reference: first candidate)
    reference: str = ""
    step_s: dict[str, float] = field(default_factory=dict)  # median step seconds per candidate
    trial_s: float = 0.0  # what the trial cost this run (0 when remembered)
    budget_s: float = 0.0
    device_model: str = ""
    epoch: int = 1  # the first epoch that trained with this choice (later when timed during the run)
    given_up: list[str] = field(default_factory=list)  # candidates whose single step did not fit a budget
    key: dict = field(default_factory=dict, repr=False)  # what the answer is valid for (not recorded)

    @property
    def amp(self) -> torch.dtype | None:
        return torch.bfloat16 if self.bf16 else None

    def record(self) -> dict:
        """What config.json keeps (key speed_trial)."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items() if k != "key"}


def device_model(device: torch.device) -> str:
    """The GPU's name, or the CPU's model string from /proc/cpuinfo: what the trial's answer is valid for."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def candidates(precision: str, device: torch.device) -> list[Candidate]:
    """What the trial compares; the first is the reference. An explicit fp32 or bf16 leaves only the layout open."""
    if precision == "fp32":
        arith = [False]
    elif precision == "bf16":
        arith = [True]
    elif device.type == "cuda" and not torch.cuda.is_bf16_supported():
        arith = [False]
    else:
        arith = [False, True]  # on a CPU without native bf16 the trial measures it slow, and it loses
    return [Candidate(b, cl) for b in arith for cl in (False, True)]


def _cache_file(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "speed" / f"{digest}.json"


def trial_key(device: torch.device, backbone: str, img_size: int, batch_size: int, n_frozen: int,
              precision: str) -> dict:
    """What the trial's answer depends on."""
    return {"version": TRIAL_VERSION, "device_model": device_model(device), "device_type": device.type,
            "backbone": backbone, "img_size": int(img_size), "batch_size": int(batch_size),
            "frozen_groups": int(n_frozen), "threads": torch.get_num_threads() if device.type == "cpu" else 0,
            "torch": torch.__version__, "candidates": [c.name for c in candidates(precision, device)]}


def remembered(key: dict) -> SpeedChoice | None:
    """An earlier trial's answer for exactly this key, or None."""
    try:
        obj = json.loads(_cache_file(key).read_text(encoding="utf-8"))
        if obj.get("key") != key:
            return None
        c = obj["choice"]
        return SpeedChoice(bool(c["bf16"]), bool(c["channels_last"]), "remembered", c.get("ratio"),
                           c.get("reference", ""), dict(c.get("step_s", {})), 0.0, float(c.get("budget_s", 0.0)),
                           key["device_model"], key=key)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none yet, or unreadable: measure again


def candidates_for(key: dict) -> list[Candidate]:
    """The candidates a trial key compares, the reference first."""
    return [Candidate.from_name(n) for n in key["candidates"]]


def remember(key: dict, choice: SpeedChoice) -> None:
    """Keep `choice` on disk for `key`: later runs with this key use it from epoch 1."""
    try:
        path = _cache_file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_json(path, {"key": key, "choice": choice.record()})
    except OSError:
        pass  # a read-only cache costs a trial next time, not correctness


class _RandomState:
    """Every random generator training draws from, saved on entry and put back on exit."""

    def __enter__(self) -> None:
        self.state = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
                      torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)

    def __exit__(self, *exc) -> None:
        torch.set_rng_state(self.state[0])
        np.random.set_state(self.state[1])
        random.setstate(self.state[2])
        if self.state[3] is not None:
            torch.cuda.set_rng_state_all(self.state[3])


class _Step:
    """One candidate's training step on its own copy of the network, timed to completion."""

    def __init__(self, net: nn.Module, cand: Candidate, x: torch.Tensor, y: torch.Tensor, device: torch.device):
        self.cand, self.device, self.y = cand, device, y
        self.x = x.contiguous(memory_format=torch.channels_last) if cand.channels_last else x.contiguous()
        self.net = net
        self.opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
        self.times: list[float] = []

    def __call__(self) -> float:
        t0 = time.perf_counter()
        with autocast(self.device, torch.bfloat16 if self.cand.bf16 else None):
            logits = self.net(self.x)
        loss = nn.functional.cross_entropy(logits.float(), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0


def measure(net: nn.Module, device: torch.device, cands: list[Candidate], batch_size: int, img_size: int,
            n_classes: int, batches_per_epoch: int, max_s: float | None = None) -> SpeedChoice:
    """Time each candidate on a copy of `net` (its freeze state kept) within the budget; the fastest wins."""
    max_s = MAX_TRIAL_S if max_s is None else max_s
    start = time.perf_counter()
    if EPOCH_FRACTION * batches_per_epoch < 2 * len(cands):
        # Not even a warm-up and one timed step per candidate fit into the share of an epoch: spend nothing.
        return SpeedChoice(False, False, "not measured", device_model=device_model(device))
    with _RandomState():
        g = torch.Generator().manual_seed(0)
        x = data.normalize_batch(torch.randint(0, 256, (batch_size, 1, img_size, img_size), generator=g,
                                               dtype=torch.uint8), data.IMAGENET_MEAN, data.IMAGENET_STD)
        x, y = x.to(device), torch.randint(0, n_classes, (batch_size,), generator=g).to(device)
        copies = {}
        for cl in sorted({c.channels_last for c in cands}):
            twin = copy.deepcopy(net).to(device).train()
            copies[cl] = twin.to(memory_format=torch.channels_last) if cl else twin
            if hasattr(net, "n_frozen"):
                copies[cl].set_freeze(net.n_frozen)  # frozen stages in eval mode, as training runs them
        steps = [_Step(copies[c.channels_last], c, x, y, device) for c in cands]
        first = steps[0]()  # the reference's warm-up: it also estimates the epoch
        budget = min(max_s, EPOCH_FRACTION * first * batches_per_epoch)
        # The least that can decide: one more warm-up per candidate and one timed step each, at about this cost.
        if (time.perf_counter() - start) + first * (2 * len(steps) - 1) > budget:
            return SpeedChoice(False, False, "not measured", budget_s=budget, trial_s=time.perf_counter() - start,
                               device_model=device_model(device))
        for s in steps[1:]:
            s()  # warm-up: allocations, kernel selection
        done = False
        for _ in range(TIMED_ROUNDS):
            for s in steps:
                last = s.times[-1] if s.times else first
                if time.perf_counter() - start + last > budget:
                    done = True
                    break
                s.times.append(s())
            if done:
                break
        timed = {s.cand: statistics.median(s.times) for s in steps if s.times}
        del copies, steps
    return _decide(cands, timed, time.perf_counter() - start, budget, device)


def _decide(cands: list[Candidate], timed: dict[Candidate, float], spent: float, budget: float,
            device: torch.device) -> SpeedChoice:
    """The fastest measured candidate (bfloat16 only when BF16_MARGIN faster than the best float32)."""
    if cands[0] not in timed:
        return SpeedChoice(False, False, "not measured", trial_s=spent, budget_s=budget,
                           device_model=device_model(device))
    best = min(timed, key=lambda c: timed[c] * (BF16_MARGIN if c.bf16 and not cands[0].bf16 else 1.0))
    ratio = timed[cands[0]] / timed[best]
    return SpeedChoice(best.bf16, best.channels_last, "measured", ratio if math.isfinite(ratio) else None,
                       cands[0].name, {c.name: timed[c] for c in timed}, spent, budget, device_model(device))


def choose(net: nn.Module, device: torch.device, *, precision: str, backbone: str, img_size: int,
           batch_size: int, n_classes: int, batches_per_epoch: int, hint_channels_last: bool = False) -> SpeedChoice:
    """The run's arithmetic and layout: remembered for this key, else measured (and remembered), else pending.

    Pending (no trial fits a tenth of an epoch before training: a small data set) starts with the reference,
    float32 (or the explicit precision) contiguous, and model/tuning times the other candidates between
    epochs. `hint_channels_last` is kept for callers; the reference never depends on one machine's table.
    """
    key = trial_key(device, backbone, img_size, batch_size, getattr(net, "n_frozen", 0), precision)
    known = remembered(key)
    if known is not None:
        return known
    cands = candidates(precision, device)
    choice = measure(net, device, cands, batch_size, img_size, n_classes, batches_per_epoch)
    if choice.source == "measured":
        remember(key, choice)
        return choice
    choice.bf16, choice.channels_last, choice.key = cands[0].bf16, cands[0].channels_last, key
    choice.source = PENDING
    return choice
