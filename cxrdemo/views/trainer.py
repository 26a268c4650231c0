"""What the Trainer page and `jobs list/watch` show, as plain data: job rows, progress, ETA, choices, sweeps."""

from __future__ import annotations

import functools
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from cxrdemo import paths
from cxrdemo.config import TrainConfig
from cxrdemo.errors import ConfigError
from cxrdemo.runs import store as runs

STATE_ICONS = {"queued": ":material/schedule:", "running": ":material/directions_run:",
               "completed": ":material/check_circle:", "failed": ":material/error:", "cancelled": ":material/cancel:",
               "interrupted": ":material/warning:", "damaged": ":material/healing:"}


# ---------------------------------------------------------------- numbers

def _float(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def progress_fraction(status: dict) -> float:
    """How far a run is, 0..1: finished epochs plus the current epoch's batch fraction."""
    if status.get("state") == "completed":
        return 1.0
    epochs = int(status.get("epochs") or 0)
    if epochs <= 0:
        return 0.0
    epoch, batch, batches = int(status.get("epoch") or 0), int(status.get("batch") or 0), int(status.get("batches") or 0)
    if status.get("phase") == "train" and epoch >= 1:
        done = epoch - 1 + (batch / batches if batches else 0.0)
    else:  # val / test / done: the epoch's training pass is over
        done = epoch
    return max(0.0, min(1.0, done / epochs))


def eta_seconds(status: dict, rows: list[dict], now: float | None = None) -> float | None:
    """Seconds left for a running run: mean epoch time once an epoch finished, else elapsed / fraction."""
    if status.get("state") != "running":
        return None
    frac = progress_fraction(status)
    epochs = int(status.get("epochs") or 0)
    secs = [s for s in (_float(r.get("seconds")) for r in rows) if s is not None]
    if secs and epochs:
        return max(0.0, (1.0 - frac) * epochs * sum(secs) / len(secs))
    started = _float(status.get("started"))
    if started is None or frac < 0.01:
        return None
    elapsed = (now or time.time()) - started
    return max(0.0, elapsed * (1.0 - frac) / frac)


def format_duration(seconds: float | None) -> str:
    """'1 h 05 min', '3 min 20 s', '42 s', or '' when unknown."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def best_val_acc(rows: list[dict]) -> float | None:
    """The highest validation accuracy of any finished epoch."""
    accs = [a for a in (_float(r.get("val_acc")) for r in rows) if a is not None]
    return max(accs) if accs else None


# ---------------------------------------------------------------- job rows

@dataclass
class JobRow:
    """One job as the panel shows it."""

    run_id: str
    state: str
    title: str  # backbone, init, freeze
    status_text: str
    fraction: float
    progress_text: str
    eta_text: str
    latest: dict = field(default_factory=dict)  # last epoch: train/val loss and accuracy
    best_val_acc: float | None = None
    error: str | None = None
    active: bool = False
    path: Path | None = None


def _epoch_text(status: dict, config: dict) -> str:
    epochs = int(status.get("epochs") or config.get("epochs") or 0)
    return f"epoch {int(status.get('epoch') or 0)}/{epochs}"


def status_text(info: runs.RunInfo, queue_position: int | None = None) -> str:
    """A sentence for the run's state."""
    st, s = info.state, info.status
    if info.damaged:
        return f"Damaged: {info.damaged}"
    if st == "queued":
        ahead = "" if queue_position is None else (" — next in line" if queue_position == 0
                                                   else f" — {queue_position} job(s) ahead")
        return f"Queued, waiting for a free training slot{ahead}"
    if st == "running":
        if s.get("phase") == "prepare" or not s.get("epochs"):
            return f"Preparing: {s.get('message') or 'starting'}"
        if s.get("phase") == "test":
            return "Testing the best model"
        return f"Training, {_epoch_text(s, info.config)}" + (
            f", batch {s.get('batch')}/{s.get('batches')}" if s.get("phase") == "train" and s.get("batches") else "")
    if st == "completed":
        acc = _float(s.get("test_accuracy"))
        return "Completed" + (f": test accuracy {acc:.1%}" if acc is not None else "")
    if st == "cancelled":
        return f"Cancelled after {_epoch_text(s, info.config)}; finished epochs are kept"
    return f"{st.capitalize()}: {s.get('error') or 'no details recorded'}"


def job_row(info: runs.RunInfo, queue_position: int | None = None, now: float | None = None) -> JobRow:
    """Everything the jobs panel shows for one run."""
    rows = [] if info.damaged else runs.read_metrics_rows(info.path)
    s, c = info.status, info.config
    last = rows[-1] if rows else {}
    latest = {k: _float(last.get(k)) for k in ("train_loss", "val_loss", "train_acc", "val_acc")} if last else {}
    frac = 0.0 if info.damaged else progress_fraction(s)
    text = _epoch_text(s, c)
    if info.state == "running" and s.get("phase") == "train" and s.get("batches"):
        text += f" · batch {s.get('batch')}/{s.get('batches')}"
    eta = eta_seconds(s, rows, now)
    return JobRow(info.run_id, info.state, f"{c.get('backbone', '?')} · init {c.get('init', '?')} · "
                  f"freeze {c.get('freeze', '?')}", status_text(info, queue_position), frac, text,
                  f"about {format_duration(eta)} left" if eta is not None else "", latest, best_val_acc(rows),
                  info.damaged or s.get("error"), info.state in runs.ACTIVE, info.path)


def panel_rows(infos: list[runs.RunInfo], max_finished: int = 8, now: float | None = None) -> list[JobRow]:
    """Active jobs (queue order) first, then the most recent finished ones, newest first."""
    queued = [i for i in infos if i.state == "queued"]
    active = [i for i in infos if i.state == "running"] + queued
    done = [i for i in reversed(infos) if i.state not in runs.ACTIVE][:max_finished]
    return [job_row(i, queued.index(i) if i in queued else None, now) for i in active + done]


def list_line(info: runs.RunInfo) -> str:
    """`jobs list`: id, state, epoch k/N, best val accuracy."""
    rows = [] if info.damaged else runs.read_metrics_rows(info.path)
    best = best_val_acc(rows)
    return (f"{info.run_id}  {info.state:11} {_epoch_text(info.status, info.config):12} "
            f"best val acc {'-' if best is None else f'{best:.3f}'}")


def watch_line(info: runs.RunInfo) -> str:
    """`jobs watch`: one progress line (printed when it changes)."""
    row = job_row(info)
    extra = ""
    if row.latest.get("val_acc") is not None:
        extra = f" | val loss {row.latest['val_loss']:.4f} acc {row.latest['val_acc']:.3f}"
    return f"{row.state}: {row.progress_text} ({row.fraction:.0%}){extra}" + (f" {row.eta_text}" if row.eta_text else "")


def loss_curves(run_dir: Path):
    """Per-epoch train/val loss as a DataFrame indexed by epoch (for a small live chart)."""
    df = runs.read_metrics(run_dir)
    return df.set_index("epoch")[["train_loss", "val_loss"]]


# ---------------------------------------------------------------- choices for the form

def freeze_options(backbone: str) -> dict[str, str]:
    """Freeze level -> label, from the registry's group names."""
    from cxrdemo.model import backbones

    stages = backbones.get_spec(backbone).stage_names
    opts = {"none": "none — train every layer (full fine-tuning)",
            "head": "head — train only the new classifier head"}
    for k in range(1, len(stages)):
        opts[str(k)] = f"{k} — freeze {' + '.join(stages[:k])}"
    for t in (1, 2, 3):
        opts[f"gradual:{t}"] = f"gradual:{t} — head only for {t} epoch(s), then everything"
    return opts


def trainable_text(backbone: str, freeze: str, num_classes: int = 2, head: str = "linear") -> str:
    """'11,177,538 of 11,177,538 parameters trainable (100 %)' for a freeze level (first epoch)."""
    from cxrdemo.model import backbones

    total, trainable = backbones.param_counts(backbone, num_classes, freeze, head)
    return f"{trainable:,} of {total:,} parameters trainable ({trainable / total:.2%})"


@functools.lru_cache(maxsize=32)
def _checkpoint_backbone(path: str, mtime: float) -> str | None:
    from cxrdemo.errors import RunError
    from cxrdemo.model import checkpoint  # torch: only once the demo model is offered

    try:
        return checkpoint.load(Path(path)).backbone
    except RunError:  # an unreadable demo model is simply not offered
        return None


def demo_backbone() -> str | None:
    """The backbone of the shipped demo model, or None when it is not there."""
    d = paths.demo_run_dir()
    if (d / "config.json").is_file():
        with_config = runs.load_run(d).config.get("backbone")
        if with_config:
            return str(with_config)
    model = d / "model.pt"
    return _checkpoint_backbone(str(model), model.stat().st_mtime) if model.is_file() else None


def init_options(backbone: str, infos: list[runs.RunInfo]) -> dict[str, str]:
    """Init value -> label: ImageNet (when the registry has weights), scratch, finished runs of this backbone."""
    from cxrdemo.model import backbones

    opts = {}
    if backbones.get_spec(backbone).supports_imagenet:
        opts["imagenet"] = "ImageNet weights (transfer learning)"
    opts["scratch"] = "From scratch (random weights)"
    if demo_backbone() == backbone:
        opts[f"run:{paths.DEMO_RUN_NAME}"] = "The shipped demo model"
    for info in reversed(infos):
        if info.state == "completed" and info.config.get("backbone") == backbone and (info.path / "model.pt").is_file():
            best = best_val_acc(runs.read_metrics_rows(info.path))
            opts[f"run:{info.run_id}"] = f"Run {info.run_id}" + (f" (best val acc {best:.1%})" if best is not None else "")
    return opts


def imagenet_note(backbone: str) -> str | None:
    """None when ImageNet weights are usable offline; else where to put the file, and the alternatives."""
    from cxrdemo.model import backbones

    if not backbones.get_spec(backbone).supports_imagenet or backbones.find_imagenet_weights(backbone):
        return None
    return (f"ImageNet weights for {backbone} are not on this machine. To use them, put the file "
            f"`{backbones.imagenet_weight_file(backbone)}` into `{paths.weights_dir()}`. Otherwise start from "
            "scratch or from a finished run.")


def sweep_configs(base: TrainConfig, backbone_names: list[str], freezes: list[str]) -> tuple[list[TrainConfig], list[str]]:
    """The backbone x freeze grid as configs, plus sentences for combinations skipped or changed."""
    from cxrdemo.model import backbones

    configs, notes = [], []
    for name, freeze in itertools.product(backbone_names, freezes):
        try:
            backbones.frozen_groups(freeze, name)  # a freeze level beyond this backbone's groups
            init = base.init
            if init.startswith("run:"):
                raise ConfigError("a sweep over backbones cannot start every network from one run; skipped")
            if init == "imagenet" and not backbones.get_spec(name).supports_imagenet:
                init = "scratch"
                notes.append(f"{name} has no ImageNet weights: it starts from scratch.")
            elif init == "imagenet" and backbones.find_imagenet_weights(name) is None:
                raise ConfigError(f"ImageNet weights ({backbones.imagenet_weight_file(name)}) are not on this "
                                  "machine; skipped")
            configs.append(base.replace(backbone=name, freeze=freeze, init=init))
        except ConfigError as exc:
            notes.append(f"{name} with freeze {freeze}: {exc}")
    return configs, list(dict.fromkeys(notes))


def backend_options(address: str | None, problem: str | None) -> tuple[dict[str, str], str]:
    """'Train on' choices (backend -> label) and the default: the Ray cluster when it answers, else this computer."""
    if not address:
        return {"local": "this computer"}, "local"
    return {"ray": f"the Ray cluster at {address}", "local": "this computer"}, "local" if problem else "ray"


def scan_rows(scan) -> list[dict]:
    """One row per split: images per class and the total (for a table)."""
    return [{"split": s, **c, "total": sum(c.values())} for s, c in scan.counts().items()]
