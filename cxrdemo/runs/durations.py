"""How long work will take here, said before it starts: the one estimator behind every "about N min".

Numbers only; views/ words them (the sweep estimate, the lessons, the wait for a slow heatmap). Best evidence first:

Training speed (seconds per training image per epoch, by backbone and freeze level):
0. this store's latest finished runs: their epochs' measured seconds against what the reference table predicts
   for the same recipes give this computer's factor at its present load (a speed trial times one step, once, and
   is remembered for good: one taken while the cores were shared made every later estimate about 4x too long);
1. MEASURED_FILE in this computer's cache folder, written by benchmarks/bench_sweep.py: one epoch of every
   backbone x freeze level timed here (labelled with its CPU and date), used as it is;
2. REFERENCE at 224 px (batch 32, 2 threads) on REFERENCE_CPU, measured by `benchmarks/bench_sweep.py` on
   2026-11-28 (quiet machine, torch 2.14.1, each recipe's own trial choice: bfloat16 autocast + channels-last for
   freeze 3 and none; one epoch on 300 train + 300 validation images of cxr-large; benchmarks/README.md), scaled
   by this computer's remembered trial step times when model/speed has measured a backbone here.

Starting and finishing a run (what the per-image table leaves out): the worker process and its imports, then
scanning and decoding the dataset, building the net, and after the epochs the test split, the trust records and
saving. Measured from this store's finished worker runs
(status.json: created -> started is the process start when the run did not wait; started -> finished minus the
epochs' own seconds in metrics.csv is the rest), else REFERENCE_PROCESS_S + REFERENCE_SETUP_S.

A slow heatmap (ScoreCAM): the network re-runs once per feature map, in batches; the caller times one batch on
the loaded model (diagnosis/cam_cost) and this module turns it into the wait.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cxrdemo import fileio
from cxrdemo.config import TrainConfig
from cxrdemo.errors import CxrError
from cxrdemo.paths import cache_dir
from cxrdemo.runs import store as runs

MEASURED_FILE = "sweep_cost.json"
REFERENCE_CPU = "a 2-core Intel Xeon with AMX"
REFERENCE_SIZE = 224
# backbone -> freeze -> seconds per training image per epoch; "head": the trunk runs once (epoch 1), then ~free.
REFERENCE: dict[str, dict[str, float]] = {
    "cnn5": {"none": 0.0238, "3": 0.0158, "head": 0.0302},
    "resnet18": {"none": 0.0180, "3": 0.0138, "head": 0.0224},
    "densenet121": {"none": 0.0723, "3": 0.0481, "head": 0.0764},
}
VAL_SHARE = 1 / 3  # an image seen without training (validation, test) costs a forward pass: ~a third of a step
DEFAULT_PER_IMAGE = 0.03  # an unlisted backbone: between resnet18 and densenet121

# Starting and finishing one run, measured on REFERENCE_START_CPU on 2026-12-06 with `jobs submit` of three runs
# queued back to back (cnn5, 128 px, 2 epochs, the built-in bacteria_virus lesson data: 400 images) while other
# jobs shared the cores (load 5-10): the first worker's process and imports took 7.5 s before its claim (a cold
# `import torch` once took 26 s); beyond the epochs' own seconds, set-up and finishing took 41.5, 62.9 and 45.7 s.
# On a quiet machine the same part took 8.0-9.8 s (the shipped lesson examples) and 15.3 s (the demo model, 4,841
# images at 224 px). The figure below sits between the two: 7.5 + 30 s, inside the 25-50 s seen from the browser.
REFERENCE_START_CPU = "a 2-core Intel Xeon Processor shared with other jobs"
REFERENCE_PROCESS_S = 7.5
REFERENCE_SETUP_S = 30.0
START_SAMPLE = 10  # the latest finished runs this store measures its start-up from

SLOW_CAM_METHODS = ("ScoreCAM",)  # the others take one forward and one backward pass: about a second


# ---------------------------------------------------------------- training speed

@dataclass(frozen=True)
class Speed:
    """Seconds per training image (backbone -> freeze -> s at `size` px) x `factor`, and where they come from."""

    per_image_s: dict[str, dict[str, float]]
    size: int = REFERENCE_SIZE
    factor: float = 1.0
    source: str = "reference"  # "runs" (this store's finished runs), "measured" (this computer's bench_sweep),
    cpu: str = REFERENCE_CPU   # "scaled" (its trials), "reference"
    date: str = ""
    runs: int = 0  # finished runs the factor was measured from ("runs")


REFERENCE_SPEED = Speed(REFERENCE)


def measured() -> dict | None:
    """This computer's own sweep measurement (bench_sweep.py), or None when there is none or it is unreadable."""
    try:
        obj = json.loads((cache_dir() / MEASURED_FILE).read_text(encoding="utf-8"))
        table = {b: {f: float(v) for f, v in row.items()} for b, row in obj["per_image_s"].items()}
        return {**obj, "per_image_s": table, "img_size": int(obj["img_size"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save_measured(record: dict) -> None:
    """Keep a sweep measurement (per_image_s, img_size, cpu, date, ...) where the estimate reads it."""
    path = cache_dir() / MEASURED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_json(path, record)


def per_image_seconds(backbone: str, freeze: str, img_size: int, speed: Speed = REFERENCE_SPEED) -> float:
    """Seconds per training image for one epoch at `img_size`, from `speed`'s table (the reference's for gaps)."""
    row = speed.per_image_s.get(backbone, {})
    level = freeze if freeze in ("none", "head") else "3" if freeze.isdigit() and int(freeze) > 0 else "none"
    base = row.get(level, REFERENCE.get(backbone, {}).get(level, DEFAULT_PER_IMAGE))
    return speed.factor * base * (img_size / speed.size) ** 2  # convolution cost grows with the pixel count


def machine_factor() -> float | None:
    """This computer's trial step time / the reference's, averaged over every remembered trial of a listed backbone."""
    ratios = []
    for f in (cache_dir() / "speed").glob("*.json"):
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
            key, choice = obj["key"], obj["choice"]
            if key["backbone"] not in REFERENCE or key["frozen_groups"] != 0:
                continue
            chosen = ("bf16" if choice["bf16"] else "fp32") + ("-channels-last" if choice["channels_last"]
                                                               else "-contiguous")
            step = float(choice["step_s"][chosen])
            ref = key["batch_size"] * per_image_seconds(key["backbone"], "none", key["img_size"])
            ratios.append(step / ref)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a trial file from another version, or half-written: no evidence
    return math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None


def _run_factor(info: runs.RunInfo) -> float | None:
    """One finished run's epochs' measured seconds / the reference table's prediction for its recipe (None: unknown)."""
    try:
        config = TrainConfig.from_dict(info.config)
        totals = info.meta["dataset"]["totals"]
        rows = runs.read_metrics_rows(info.path)
        spent = sum(float(r["seconds"]) for r in rows)
        predicted = training_seconds(config.replace(epochs=len(rows)), int(totals["train"]), int(totals["val"]))
    except (KeyError, TypeError, ValueError, CxrError):
        return None
    return spent / predicted if rows and spent > 0 and predicted > 0 else None


def store_factor(runs_dir: str | Path | None = None) -> tuple[float, int] | None:
    """(median factor, runs) over this store's latest finished runs: how much slower than the reference it trains now."""
    done = [i for i in runs.list_runs(runs_dir) if i.state == "completed" and not i.damaged][-START_SAMPLE:]
    factors = [f for f in map(_run_factor, done) if f is not None]
    return (statistics.median(factors), len(factors)) if factors else None


def training_speed(runs_dir: str | Path | None = None) -> Speed:
    """The best evidence of this computer's training speed: its store's latest runs, its sweep measurement, its
    trials, else the reference."""
    recent = store_factor(runs_dir)
    if recent is not None:
        return Speed(REFERENCE, REFERENCE_SIZE, recent[0], "runs", runs=recent[1])
    mine = measured()
    if mine is not None:
        return Speed(mine["per_image_s"], mine["img_size"], 1.0, "measured", str(mine.get("cpu") or "this CPU"),
                     str(mine.get("date") or ""))
    factor = machine_factor()
    return Speed(REFERENCE, REFERENCE_SIZE, factor, "scaled") if factor else REFERENCE_SPEED


def training_seconds(config: TrainConfig, n_train: int, n_val: int, speed: Speed = REFERENCE_SPEED) -> float:
    """Seconds of one run's epochs, validation included (every epoch run: no early stop assumed); no start-up."""
    n = min(n_train, config.max_images) if config.max_images else n_train
    per = per_image_seconds(config.backbone, str(config.freeze), config.img_size, speed)
    if str(config.freeze) == "head":  # trunk features once, then epochs on the head alone
        return per * (n + n_val)
    return config.epochs * per * (n + VAL_SHARE * n_val)


# ---------------------------------------------------------------- starting a run

@dataclass(frozen=True)
class StartCost:
    """Seconds one run costs beyond its epochs: the worker process (and imports), then set-up and finishing."""

    process_s: float
    setup_s: float  # scanning, decoding, building; the test split, trust records and saving after the epochs
    runs: int  # finished runs of this store it was measured from (0: the reference figures)

    @property
    def seconds(self) -> float:
        """Both parts: what each queued run adds to the epochs."""
        return self.process_s + self.setup_s


REFERENCE_START = StartCost(REFERENCE_PROCESS_S, REFERENCE_SETUP_S, 0)


def _start_parts(info: runs.RunInfo) -> tuple[float | None, float | None]:
    """(process start, set-up) seconds of one finished run; None where it cannot tell."""
    s = info.status
    try:
        created, started, finished = (float(s[k]) for k in ("created", "started", "finished"))
        epochs = sum(float(r["seconds"]) for r in runs.read_metrics_rows(info.path))
    except (KeyError, TypeError, ValueError):
        return None, None
    setup = finished - started - epochs
    waited = started - created
    # A run trained inside the process that made it (tests, example builds) has no worker start to measure.
    return (waited if waited > 0.5 else None), (setup if setup >= 0 else None)


def run_start(runs_dir: str | Path | None = None) -> StartCost:
    """What starting a run costs on this computer, from its store's latest finished runs; the reference otherwise."""
    done = [i for i in runs.list_runs(runs_dir) if i.state == "completed" and not i.damaged][-START_SAMPLE:]
    parts = [_start_parts(i) for i in done]
    process = [p for p, _ in parts if p is not None]
    setup = [s for _, s in parts if s is not None]
    if not setup:
        return REFERENCE_START
    # The quickest claim is a run that did not wait behind another: the others' wait is queueing, not start-up.
    return StartCost(min(process) if process else REFERENCE_PROCESS_S, statistics.median(setup), len(setup))


# ---------------------------------------------------------------- what the pages estimate

def sweep_seconds(configs: Iterable[TrainConfig], n_train: int, n_val: int, speed: Speed = REFERENCE_SPEED,
                  start: StartCost | None = None) -> float:
    """Estimated wall seconds of the runs one after another, each started (`start`) and trained."""
    per_run = start.seconds if start is not None else 0.0
    return sum(per_run + training_seconds(c, n_train, n_val, speed) for c in configs)


def cam_seconds(method: str, batch_s: float, feature_maps: int, batch: int) -> float | None:
    """Seconds `method` takes for one image, from one timed forward batch (None: fast, not worth a wait)."""
    if method not in SLOW_CAM_METHODS:
        return None
    return batch_s * math.ceil(feature_maps / batch)  # ScoreCAM re-runs the network once per feature map
