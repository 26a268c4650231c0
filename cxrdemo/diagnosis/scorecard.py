"""Which CAM method is most faithful for this model? Mean ROAD score per method over N test images.

Each method's map of the model's own decision is scored with ROAD (`faithfulness.road_curves`, the library's
metrics, four percentiles); the library's RandomCAM is scored alongside as the chance line. ScoreCAM (one forward
pass per 32 feature maps) gets its own smaller N. The table is stored as cam_scorecard.json in the run folder, with
the sha256 of the model.pt it was made for, so a retrained model does not inherit an old table.
"""

from __future__ import annotations

import functools
import hashlib
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import stats

from cxrdemo.diagnosis import explain as explain_mod
from cxrdemo.diagnosis import faithfulness
from cxrdemo.diagnosis.predict import LoadedModel, predict_probs
from cxrdemo.errors import Cancelled, ConfigError, RunError
from cxrdemo.model import checkpoint
from cxrdemo.runs import store as runs

FILE = "cam_scorecard.json"
RANDOM = "RandomCAM"  # the chance line: not a method a user picks
SLOW_METHODS = {"ScoreCAM": 4}  # method -> its own N (30-43 s per image for resnet18 on 2 cores)
LIVE_SECONDS = 2.0  # "preselect the most faithful" chooses among methods at most this slow per image

Progress = Callable[[int, int, str], None]  # (done, total, message)


def _interval(scores: np.ndarray, seed: int) -> tuple[float | None, float | None]:
    """95% percentile-bootstrap interval of the mean (None below two images)."""
    if len(scores) < 2:
        return None, None
    if np.ptp(scores) == 0:
        return float(scores[0]), float(scores[0])
    res = stats.bootstrap((scores,), np.mean, confidence_level=0.95, method="percentile", n_resamples=2000,
                          random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def score_methods(model: LoadedModel, images: torch.Tensor, methods: list[str] | None = None, n: int = 20,
                  seed: int = 0, *, targets: list[int] | None = None,
                  percentiles: tuple[int, ...] = faithfulness.FULL_PERCENTILES,
                  progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """Method x mean ROAD score (95% bootstrap interval) and seconds per image, on the first n of `images`.

    images: uint8 Nx1xSxS as prepared for the model; targets: the class to explain per image (default: the
    model's decision). should_stop() -> True raises Cancelled between images.
    """
    methods = list(methods) if methods else list(explain_mod.CAM_METHODS)
    for m in methods:
        explain_mod.method_class(m)
    if len(images) == 0 or n < 1:
        raise ConfigError("The scorecard needs at least one image.")
    plan = {m: min(n, SLOW_METHODS.get(m, n), len(images)) for m in [*methods, RANDOM]}
    if targets is None:  # the class Diagnosis explains by default: the model's own decision
        targets = [int(k) for k in model.decide(predict_probs(model, images[:n]))]
    total, done = sum(plan.values()), 0
    rows = []
    for m in [*methods, RANDOM]:
        scores, cam_seconds = [], []
        for i in range(plan[m]):
            if should_stop is not None and should_stop():
                raise Cancelled("The CAM scorecard was cancelled.")
            x = images[i]
            k = int(targets[i])
            start = time.perf_counter()
            if m == RANDOM:
                cam = faithfulness.random_cams(model, x, k, 1, seed + i)[0]
            else:
                cam = explain_mod.explain(model, x, m, k).cam
            cam_seconds.append(time.perf_counter() - start)
            curves = faithfulness.road_curves(model, x, cam, k, percentiles, seed=seed + i)
            scores.append(float(curves.scores[0]))
            done += 1
            if progress is not None:
                progress(done, total, f"{m}: image {i + 1} of {plan[m]}")
        arr = np.asarray(scores)
        low, high = _interval(arr, seed)
        rows.append({"method": m, "n": len(arr), "mean": float(arr.mean()), "low": low, "high": high,
                     "seconds_per_image": float(np.mean(cam_seconds)), "scores": [round(s, 5) for s in scores]})
    table = {"run": model.run_id, "classes": list(model.classes), "percentiles": list(percentiles),
             "n_images": min(n, len(images)), "seed": seed, "rows": rows}
    table["most_faithful"] = most_faithful(table)
    return table


def most_faithful(table: dict, max_seconds: float = LIVE_SECONDS) -> str | None:
    """The method with the highest mean score among those that run in under max_seconds per image (not random)."""
    live = [r for r in table.get("rows", []) if r["method"] != RANDOM and r["n"] > 0
            and r["seconds_per_image"] <= max_seconds]
    return max(live, key=lambda r: r["mean"])["method"] if live else None


def _model_digest(run_dir: Path) -> str | None:
    f = checkpoint.model_path(run_dir)
    if not f.is_file():
        return None
    st = f.stat()
    # The pages ask on every rerun: hash a model file once per version (a resnet's is ~45 MB).
    return _digest(str(f.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _digest(f: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_scorecard(run_dir: str | Path, table: dict) -> Path:
    """Store the table as cam_scorecard.json in the run folder (atomic), tagged with its model.pt's digest."""
    path = Path(run_dir) / FILE
    runs.atomic_write_json(path, {**table, "model_sha256": _model_digest(Path(run_dir))})
    return path


def read_scorecard(run_dir: str | Path) -> dict | None:
    """The stored table, or None when there is none or it was made for another model.pt."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    table = runs.read_json(path)
    if not isinstance(table.get("rows"), list):
        raise RunError(f"{path} is not a CAM scorecard; delete it and compute the scorecard again.")
    return table if table.get("model_sha256") == _model_digest(Path(run_dir)) else None
