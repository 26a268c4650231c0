"""What a sweep will cost, said before the click: seconds per training image from measurements, scaled to this computer.

Best evidence first:
1. MEASURED_FILE in this computer's cache folder, written by benchmarks/bench_sweep.py: one epoch of every
   backbone x freeze level timed here (labelled with its CPU and date), used as it is;
2. REFERENCE: seconds per training image at 224 px (batch 32, 2 threads) on REFERENCE_CPU, measured by
   `benchmarks/bench_sweep.py` on 2026-11-28 (quiet machine, torch 2.14.1, each recipe's own trial choice: bfloat16
   autocast + channels-last for freeze 3 and none; one epoch on 300 train + 300 validation images of cxr-large;
   benchmarks/README.md), scaled by this computer's remembered trial step times when model/speed has measured a
   backbone here, else said to be the reference PC's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from cxrdemo import fileio
from cxrdemo.config import TrainConfig
from cxrdemo.paths import cache_dir

MEASURED_FILE = "sweep_cost.json"
REFERENCE_CPU = "a 2-core Intel Xeon with AMX"
REFERENCE_SIZE = 224
# backbone -> freeze -> seconds per training image per epoch; "head": the trunk runs once (epoch 1), then ~free.
REFERENCE: dict[str, dict[str, float]] = {
    "cnn5": {"none": 0.0238, "3": 0.0158, "head": 0.0302},
    "resnet18": {"none": 0.0180, "3": 0.0138, "head": 0.0224},
    "densenet121": {"none": 0.0723, "3": 0.0481, "head": 0.0764},
}
VAL_SHARE = 1 / 3  # a validation image costs a forward pass: about a third of a training step
DEFAULT_PER_IMAGE = 0.03  # an unlisted backbone: between resnet18 and densenet121


def measured() -> dict | None:
    """This computer's own sweep measurement (bench_sweep.py), or None when there is none or it is unreadable."""
    try:
        obj = json.loads((cache_dir() / MEASURED_FILE).read_text(encoding="utf-8"))
        table = {b: {f: float(v) for f, v in row.items()} for b, row in obj["per_image_s"].items()}
        return {**obj, "per_image_s": table, "img_size": int(obj["img_size"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save_measured(record: dict) -> None:
    """Keep a sweep measurement (per_image_s, img_size, cpu, date, ...) where the Trainer's estimate reads it."""
    path = cache_dir() / MEASURED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_json(path, record)


def per_image_seconds(backbone: str, freeze: str, img_size: int, table: dict | None = None,
                      table_size: int = REFERENCE_SIZE) -> float:
    """Seconds per training image for one epoch from `table` (the reference by default), scaled to `img_size`."""
    row = (REFERENCE if table is None else table).get(backbone, {})
    level = freeze if freeze in ("none", "head") else "3" if freeze.isdigit() and int(freeze) > 0 else "none"
    base = row.get(level, REFERENCE.get(backbone, {}).get(level, DEFAULT_PER_IMAGE))
    return base * (img_size / table_size) ** 2  # convolution cost grows with the pixel count


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


def sweep_seconds(configs: Iterable[TrainConfig], n_train: int, n_val: int, factor: float = 1.0,
                  table: dict | None = None, table_size: int = REFERENCE_SIZE) -> float:
    """Estimated wall seconds of the runs one after another (every epoch run: no early stop assumed)."""
    total = 0.0
    for c in configs:
        n = min(n_train, c.max_images) if c.max_images else n_train
        per = per_image_seconds(c.backbone, str(c.freeze), c.img_size, table, table_size)
        if str(c.freeze) == "head":  # trunk features once, then epochs on the head alone
            total += per * (n + n_val)
        else:
            total += c.epochs * per * (n + VAL_SHARE * n_val)
    return total * factor


def sweep_cost_text(configs: list[TrainConfig], n_train: int, n_val: int) -> str:
    """'About N min on this computer' (or on the reference machine, until a trial has measured this one)."""
    if not configs or n_train <= 0:
        return ""
    mine = measured()
    if mine is not None:
        minutes = sweep_seconds(configs, n_train, n_val, 1.0, mine["per_image_s"], mine["img_size"]) / 60
        where = f"on this computer (measured on {mine.get('cpu', 'this CPU')}, {mine.get('date', '')})"
    else:
        factor = machine_factor()
        minutes = sweep_seconds(configs, n_train, n_val, factor or 1.0) / 60
        where = ("on this computer (scaled by its measured training speed)" if factor
                 else f"on {REFERENCE_CPU} (reference PC); this computer's speed is measured by its first large "
                      "run or by benchmarks/bench_sweep.py")
    amount = f"about {max(1, round(minutes)):,} min" if minutes < 120 else f"about {minutes / 60:.1f} h"
    return f"{len(configs)} run(s), one after another: {amount} {where}."
