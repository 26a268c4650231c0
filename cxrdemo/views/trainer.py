"""What the Trainer page's jobs panel and `jobs list/watch` show, as plain data: job rows, progress, ETA."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from cxrdemo.runs import store as runs
from cxrdemo.views import numbers, words
from cxrdemo.views.chance import chance_sentence
from cxrdemo.views.host_paths import Roots, without_host_paths
from cxrdemo.views.trainer_form import repeat_problem

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


LATEST_METRICS = (("train_loss", "train loss"), ("val_loss", "val loss"), ("train_acc", "train accuracy"),
                  ("val_acc", "val accuracy"))


def latest_texts(latest: dict[str, float | None]) -> list[tuple[str, str]]:
    """(label, value) of the latest epoch's losses and accuracies, as a job's row shows them ('–' when missing)."""
    return [(label, numbers.metric(key, latest.get(key))) for key, label in LATEST_METRICS]


def rough_duration(seconds: float) -> str:
    """An estimate's length, as precise as an estimate is: '40 s', '7 min', '2.5 h'."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = seconds / 60
    return f"{round(minutes):,} min" if minutes < 120 else f"{minutes / 60:.1f} h"




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
    repeat_problem: str | None = None  # why "Start again" would fail the same way
    data: str = ""  # the dataset folder it trained on (config.json), for views/host_paths


def _epoch_text(status: dict, config: dict) -> str:
    epochs = int(status.get("epochs") or config.get("epochs") or 0)
    return f"epoch {int(status.get('epoch') or 0)}/{epochs}"


def status_text(info: runs.RunInfo, queue_position: int | None = None, finished_epochs: int | None = None) -> str:
    """A sentence for the run's state (a failure's own sentence is shown once, by the card, not here)."""
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
        chance = chance_sentence(runs.read_test_metrics(info.path))
        return ("Completed" + (f": test accuracy {numbers.percent(acc)}" if acc is not None else "")
                + (f" — the model {chance}" if chance else ""))
    if st == "cancelled":
        epochs = int(s.get("epochs") or info.config.get("epochs") or 0)
        done = len(runs.read_metrics_rows(info.path)) if finished_epochs is None else finished_epochs
        if not done:
            return "Cancelled before the first epoch finished"
        return f"Cancelled after epoch {done}/{epochs}; the finished epoch{'s are' if done > 1 else ' is'} kept"
    return st.capitalize() + ("" if s.get("error") else ": no details recorded")


def job_row(info: runs.RunInfo, queue_position: int | None = None, now: float | None = None,
            roots: Roots = None) -> JobRow:
    """Everything the jobs panel shows for one run; `roots` (a classroom): its data folder shown inside them only."""
    rows = [] if info.damaged else runs.read_metrics_rows(info.path)
    s, c = info.status, info.config
    hide = lambda text: text and without_host_paths(text, [str(c.get("data") or "")], roots)  # noqa: E731
    last = rows[-1] if rows else {}
    latest = {k: _float(last.get(k)) for k in ("train_loss", "val_loss", "train_acc", "val_acc")} if last else {}
    frac = 0.0 if info.damaged else progress_fraction(s)
    text = _epoch_text(s, c)
    if info.state == "running" and s.get("phase") == "train" and s.get("batches"):
        text += f" · batch {s.get('batch')}/{s.get('batches')}"
    eta = eta_seconds(s, rows, now)
    return JobRow(info.run_id, info.state, f"{c.get('backbone', '?')} · {words.init_words(c.get('init', '?'))} · "
                  f"freeze {c.get('freeze', '?')}", status_text(info, queue_position, len(rows)), frac, text,
                  f"about {format_duration(eta)} left" if eta is not None else "", latest, runs.best_val_acc(rows),
                  hide(info.damaged or s.get("error")), info.state in runs.ACTIVE, info.path,
                  hide(_repeat_problem(info)),
                  str(c.get("data") or ""))


def _repeat_problem(info: runs.RunInfo) -> str | None:
    if info.state not in ("failed", "cancelled", "interrupted") or info.damaged:
        return None
    return repeat_problem(info.config)


def panel_rows(infos: list[runs.RunInfo], max_finished: int = 8, now: float | None = None,
               browser: str = "", roots: Roots = None) -> list[JobRow]:
    """Active jobs (queue order) first, then the most recent finished ones, newest first; `browser`'s own before
    the others' (a classroom, whose `roots` hide the server's folders: job_row)."""
    queued = [i for i in infos if i.state == "queued"]
    active = [i for i in infos if i.state == "running"] + queued
    done = [i for i in reversed(infos) if i.state not in runs.ACTIVE][:max_finished]
    shown = sorted(active + done, key=lambda i: not (browser and i.meta.get("browser") == browser))  # stable
    return [job_row(i, queued.index(i) if i in queued else None, now, roots) for i in shown]


def own_first(infos: list, browser: str, everyone: bool) -> list:
    """A classroom's view of the runs: this browser's only, or with `everyone` its own first and then the others'
    (runs without a browser, such as shipped examples, count as everyone's); order kept within each."""
    mine = [i for i in infos if browser and i.meta.get("browser") == browser]
    return mine + [i for i in infos if i not in mine] if everyone else mine


def list_line(info: runs.RunInfo) -> str:
    """`jobs list`: id, state, epoch k/N, best val accuracy."""
    rows = [] if info.damaged else runs.read_metrics_rows(info.path)
    best = runs.best_val_acc(rows)
    return (f"{info.run_id}  {info.state:11} {_epoch_text(info.status, info.config):12} "
            f"best val acc {numbers.percent(best)}")


def watch_line(info: runs.RunInfo) -> str:
    """`jobs watch`: one progress line (printed when it changes)."""
    row = job_row(info)
    extra = ""
    if row.latest.get("val_acc") is not None:
        extra = (f" | val loss {numbers.metric('val_loss', row.latest['val_loss'])} "
                 f"acc {numbers.percent(row.latest['val_acc'])}")
    return f"{row.state}: {row.progress_text} ({row.fraction:.0%}){extra}" + (f" {row.eta_text}" if row.eta_text else "")


def loss_curves(run_dir: Path):
    """Per-epoch train/val loss as a DataFrame indexed by epoch (for a small live chart)."""
    df = runs.read_metrics(run_dir)
    return df.set_index("epoch")[["train_loss", "val_loss"]]


def learning_curves(run_dir: Path):
    """Per-epoch loss and accuracy, train and val, as a long table (epoch, measure, split, value) for a chart."""
    df = runs.read_metrics(run_dir)
    cols = {"train_loss": ("loss", "train"), "val_loss": ("loss", "validation"),
            "train_acc": ("accuracy", "train"), "val_acc": ("accuracy", "validation")}
    long = df.melt(id_vars="epoch", value_vars=[c for c in cols if c in df], var_name="column")
    long["measure"] = long["column"].map(lambda c: cols[c][0])
    long["split"] = long["column"].map(lambda c: cols[c][1])
    return long.drop(columns="column").dropna(subset=["value"])
