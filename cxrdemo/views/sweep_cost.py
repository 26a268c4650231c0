"""What a sweep will cost, said before the click: runs/durations estimates, this module words it."""

from __future__ import annotations

from pathlib import Path

from cxrdemo.config import TrainConfig
from cxrdemo.runs import durations
from cxrdemo.views.trainer import rough_duration


def speed_words(speed: durations.Speed) -> str:
    """Where the training speed comes from, in words."""
    if speed.source == "runs":
        return f"on this computer, at the speed its last {speed.runs} finished run(s) trained"
    if speed.source == "measured":
        return f"on this computer, as measured on {speed.cpu}" + (f" on {speed.date}" if speed.date else "")
    if speed.source == "scaled":
        return "on this computer, scaled by its measured training speed"
    return (f"on {speed.cpu}, the reference PC, until this computer's speed is measured by its first large run or "
            "by benchmarks/bench_sweep.py")


def start_words(start: durations.StartCost) -> str:
    """What starting each run adds, and where that figure comes from."""
    where = (f"as the last {start.runs} finished run(s) here took" if start.runs
             else f"measured on {durations.REFERENCE_START_CPU}")
    return f"each run adds about {rough_duration(start.seconds)} to start and finish ({where})"


def sweep_cost_text(configs: list[TrainConfig], n_train: int, n_val: int,
                    runs_dir: str | Path | None = None) -> str:
    """'N run(s), one after another: about M min on this computer (...); each run adds about S to start ...'."""
    if not configs or n_train <= 0:
        return ""
    speed, start = durations.training_speed(runs_dir), durations.run_start(runs_dir)
    seconds = durations.sweep_seconds(configs, n_train, n_val, speed, start)
    return (f"{len(configs)} run(s), one after another: about {rough_duration(seconds)} {speed_words(speed)}; "
            f"{start_words(start)}.")
