"""What a sweep will cost, said before the click: seconds per training image from measurements, scaled to this computer.

REFERENCE holds seconds per training image at 224 px (batch 32, 2 threads) on the reference machine
(2-core Intel Xeon with AMX, quiet, torch 2.14.1, bfloat16 autocast + channels-last: benchmarks/README.md,
bench_train.py and bench_precision.py of 2026-11-22). Rows marked modelled in benchmarks/README.md were not
measured directly. When model/speed's timed trial has measured a backbone on this computer, the ratio of its
step time to the reference scales every estimate; otherwise the reference stands as it is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from cxrdemo.config import TrainConfig
from cxrdemo.paths import cache_dir

REFERENCE_SIZE = 224
# backbone -> freeze -> seconds per training image per epoch; "head": the trunk runs once (epoch 1), then ~free.
REFERENCE: dict[str, dict[str, float]] = {
    "cnn5": {"none": 0.0204, "3": 0.0130, "head": 0.0068},
    "resnet18": {"none": 0.0182, "3": 0.0121, "head": 0.0061},
    "densenet121": {"none": 0.0725, "3": 0.0362, "head": 0.0242},
}
VAL_SHARE = 1 / 3  # a validation image costs a forward pass: about a third of a training step
DEFAULT_PER_IMAGE = 0.03  # an unlisted backbone: between resnet18 and densenet121


def per_image_seconds(backbone: str, freeze: str, img_size: int) -> float:
    """Reference seconds per training image for one epoch (convolution cost grows with the pixel count)."""
    row = REFERENCE.get(backbone, {})
    level = freeze if freeze in ("none", "head") else "3" if freeze.isdigit() and int(freeze) > 0 else "none"
    base = row.get(level, DEFAULT_PER_IMAGE)
    return base * (img_size / REFERENCE_SIZE) ** 2


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


def sweep_seconds(configs: Iterable[TrainConfig], n_train: int, n_val: int, factor: float = 1.0) -> float:
    """Estimated wall seconds of the runs one after another (every epoch run: no early stop assumed)."""
    total = 0.0
    for c in configs:
        n = min(n_train, c.max_images) if c.max_images else n_train
        per = per_image_seconds(c.backbone, str(c.freeze), c.img_size)
        if str(c.freeze) == "head":  # trunk features once, then epochs on the head alone
            total += per * (n + n_val)
        else:
            total += c.epochs * per * (n + VAL_SHARE * n_val)
    return total * factor


def sweep_cost_text(configs: list[TrainConfig], n_train: int, n_val: int) -> str:
    """'About N min on this computer' (or on the reference machine, until a trial has measured this one)."""
    if not configs or n_train <= 0:
        return ""
    factor = machine_factor()
    minutes = sweep_seconds(configs, n_train, n_val, factor or 1.0) / 60
    amount = f"about {max(1, round(minutes)):,} min" if minutes < 120 else f"about {minutes / 60:.1f} h"
    where = ("on this computer (scaled by its measured training speed)" if factor
             else "on a 2-core reference PC; this computer's speed is measured by its first large run")
    return f"{len(configs)} run(s), one after another: {amount} {where}."
