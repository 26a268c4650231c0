"""Load a run's model once, preprocess exactly as it was trained, predict."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cxrdemo.data import dataset as data
from cxrdemo.diagnosis import quality
from cxrdemo.errors import RunError
from cxrdemo.model import metrics
from cxrdemo.model.backbones import Net
from cxrdemo.runs import store as runs


@dataclass
class LoadedModel:
    """A model ready for inference, with what it needs to preprocess and decide."""

    net: Net
    classes: tuple[str, ...]
    img_size: int
    threshold: float | None
    run_id: str
    path: Path
    config: dict = field(default_factory=dict)
    intensity: str = "none"  # the per-image intensity step the model was trained with
    # The network is cached and shared by every page and tab: one forward (or CAM) at a time.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Class indices by the model's own rule (saved threshold, else argmax)."""
        return metrics.predict_labels(np.atleast_2d(probs), self.threshold)


@functools.lru_cache(maxsize=8)
def _load(model_file: str, mtime_ns: int) -> LoadedModel:
    from cxrdemo.model.train import load_net

    path = Path(model_file)
    ckpt = runs.load_checkpoint(path)
    net = load_net(ckpt)
    net.requires_grad_(False)
    pre = ckpt.get("preprocessing") or {}
    return LoadedModel(net, tuple(ckpt["classes"]), int(pre.get("img_size", 224)), ckpt.get("threshold"),
                       path.parent.name, path.parent, ckpt.get("config") or {}, pre.get("intensity", "none"))


def load_model(run: str, runs_dir: str | Path | None = None, *, allow_path: bool = False) -> LoadedModel:
    """The model of run `run` ('demo', an id, or with allow_path a folder), cached until model.pt changes."""
    d = runs.run_dir(run, runs_dir, allow_path=allow_path)
    f = d / "model.pt"
    if not f.is_file():
        raise RunError(f"Run {run} has no trained model yet.")
    return _load(str(f), f.stat().st_mtime_ns)


def model_input(model: LoadedModel, image: torch.Tensor) -> torch.Tensor:
    """uint8 1xSxS (from data.preprocess) -> the normalised 1x3xSxS batch the network expects."""
    return data.normalize_batch(image.unsqueeze(0) if image.dim() == 3 else image)


@torch.inference_mode()
def predict_probs(model: LoadedModel, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Class probabilities for a uint8 Nx1xSxS tensor."""
    with model.lock:
        model.net.eval()
        out = [torch.softmax(model.net(data.normalize_batch(images[i:i + batch_size])), 1)
               for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.classes)))


def predict_split(model: LoadedModel, data_root: str, split: str = "test") -> tuple[np.ndarray, np.ndarray, int]:
    """(labels, probabilities, files skipped) of `model` on one split of a dataset whose classes match the model's."""
    from cxrdemo.errors import DatasetError

    scan = data.scan_dataset(data_root, require_train=False)
    if tuple(scan.classes) != tuple(model.classes):
        raise DatasetError(f"The dataset's classes {list(scan.classes)} differ from the model's {list(model.classes)}.")
    items = scan.splits.get(split) or []
    if not items:
        raise DatasetError(f"The dataset {data_root} has no '{split}' images.")
    cached = data.load_images(items, model.img_size)
    probs = predict_probs(model, data.adjust_intensity(cached.images, model.intensity))
    return cached.labels.numpy(), probs, len(cached.skipped)


def evaluate_run(model: LoadedModel, data_root: str, split: str = "test") -> dict:
    """Metrics of `model` on one split of a dataset (classes must match the model's)."""
    y, probs, skipped = predict_split(model, data_root, split)
    result = metrics.classification_metrics(y, probs, model.classes, model.threshold)
    result["skipped"] = skipped
    return result


# ---------------------------------------------------------------- one uploaded radiograph

@dataclass
class Radiograph:
    """An image read in memory: the greyscale pixels, how it was read, and whether it looks like a chest X-ray."""

    grey: np.ndarray  # HxW float32 in [0, 1], original resolution
    meta: data.ImageMeta  # never carries a patient identifier
    looks_like_cxr: bool
    warning: str | None  # a sentence when the image does not look like a chest radiograph
    digest: str  # sha256 of the file bytes: a cache key that names nobody


def read_radiograph(src: bytes | str | os.PathLike, name: str = "") -> Radiograph:
    """Read an upload (bytes, kept in memory) or a file; ImageReadError with a sentence when it is not an image."""
    raw = bytes(src) if isinstance(src, (bytes, bytearray, memoryview)) else None
    grey, meta = data.read_image(raw if raw is not None else src, name)
    if raw is None:
        with open(src, "rb") as f:
            raw = f.read()
    check = quality.check_radiograph(grey, meta)
    return Radiograph(grey, meta, check.looks_like_cxr, check.warning, digest(raw))


def prepare(model: LoadedModel, grey: np.ndarray) -> torch.Tensor:
    """A [0, 1] greyscale image -> the uint8 1xSxS tensor this model was trained on."""
    return data.adjust_intensity(data.resize_to_uint8(grey, model.img_size), model.intensity)


RECIPE_KEYS = ("backbone", "init", "freeze", "epochs", "img_size", "lr", "optimizer", "augment", "balance", "head",
               "threshold")
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auroc", "f1", "n")


def model_summary(model: LoadedModel) -> dict:
    """What a page shows next to a model: its recipe, its test metrics (or {}), classes and decision rule."""
    from cxrdemo.runs import store as runs

    cfg = model.config or {}
    tm = runs.read_test_metrics(model.path) or _card_metrics(model.path)
    return {
        "run": model.run_id,
        "classes": list(model.classes),
        "recipe": {k: cfg[k] for k in RECIPE_KEYS if k in cfg},
        "test": {k: tm[k] for k in SUMMARY_METRICS if isinstance(tm.get(k), (int, float))},
        "decision": (f"{model.classes[1]} when p({model.classes[1]}) >= {model.threshold:.3f}"
                     if model.threshold is not None and len(model.classes) == 2 else "the most probable class"),
    }


def _card_metrics(run_dir: Path) -> dict:
    """The first held-out evaluation of a model card (the demo model has no test split of its own), or {}."""
    try:
        first = (runs.read_json(Path(run_dir) / "evaluation.json").get("evaluations") or [{}])[0]
    except RunError:
        return {}
    return {**(first.get("metrics") or {}), "n": first.get("n")} if first.get("metrics") else {}


def model_mtime(run: str, runs_dir: str | Path | None = None) -> int:
    """model.pt's modification time in ns (0 when absent): a cache key that changes when a run is retrained."""
    try:
        return (runs.run_dir(run, runs_dir) / "model.pt").stat().st_mtime_ns
    except (OSError, RunError):
        return 0


def digest(raw: bytes) -> str:
    """sha256 of an upload's bytes: identifies the content for caching, names nobody."""
    return hashlib.sha256(raw).hexdigest()


def example_images(per_class: int = 2, root: str | Path | None = None) -> dict[str, Path]:
    """A few built-in test radiographs, label -> path ('NORMAL example 1'...), first files of each class folder."""
    from cxrdemo import paths

    base = Path(root) if root else paths.EXAMPLES_DIR
    out: dict[str, Path] = {}
    if not base.is_dir():
        return out
    for cls in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in cls.iterdir() if f.is_file() and f.suffix.lower() in data.IMAGE_SUFFIXES)
        for i, f in enumerate(files[:per_class]):
            out[f"{cls.name} example {i + 1}"] = f
    return out
