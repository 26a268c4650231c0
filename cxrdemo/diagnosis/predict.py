"""Load a run's model once, preprocess by the record its model file carries, predict."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cxrdemo import data
from cxrdemo.diagnosis import quality
from cxrdemo.errors import RunError
from cxrdemo.model import checkpoint, conformal, metrics, predictions, trust
from cxrdemo.model.backbones import Net
from cxrdemo.model.checkpoint import Decision, Preprocessing
from cxrdemo.population import Population
from cxrdemo.runs import store as runs


@dataclass
class LoadedModel:
    """A model ready for inference, with the preprocessing and the decision its model file carries."""

    net: Net
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    decision: Decision
    run_id: str
    path: Path
    config: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)  # calibration, conformal, domain, when the model file has them
    trust: trust.Trust = field(default_factory=trust.Trust)  # the records read back (T = 1, no sets, no check)
    population: Population | None = None  # whom its training films came from (None: not stated)
    # The network is cached and shared by every page and tab: one forward (or CAM) at a time.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def img_size(self) -> int:
        """The square input size in pixels (from the preprocessing record)."""
        return self.preprocessing.img_size

    @property
    def calibration(self) -> float:
        """The temperature its probabilities are divided by (1.0: not calibrated)."""
        return self.trust.temperature

    @property
    def conformal(self) -> dict:
        """Coverage level -> ConformalRecord ({} when the model has no prediction sets)."""
        return self.trust.conformal

    @property
    def domain(self):
        """The DomainRecord of its training images, or None (no in-domain check)."""
        return self.trust.domain

    @property
    def threshold(self) -> float | None:
        """The decision cut on p(class 1) on the calibrated scale (None: the most probable class)."""
        return self.trust.cut(self.decision.value)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Class indices by the model's own decision (its saved threshold, else argmax)."""
        return metrics.predict_labels(np.atleast_2d(probs), self.decision.value)


@functools.lru_cache(maxsize=8)
def _load(model_file: str, mtime_ns: int) -> LoadedModel:
    path = Path(model_file)
    model = checkpoint.load(path)
    net = checkpoint.rebuild_net(model)
    net.requires_grad_(False)
    return LoadedModel(net, model.classes, model.preprocessing, model.decision, path.parent.name, path.parent,
                       model.config, model.records, trust.Trust.from_records(model.records, path.parent.name),
                       model.population)


def load_model(run: str, runs_dir: str | Path | None = None, *, allow_path: bool = False) -> LoadedModel:
    """The model of run `run` ('demo', an id, or with allow_path a folder), cached until model.pt changes."""
    d = runs.run_dir(run, runs_dir, allow_path=allow_path)
    f = checkpoint.model_path(d)
    if not f.is_file():
        raise RunError(f"Run {run} has no trained model yet.")
    return _load(str(f), f.stat().st_mtime_ns)


def model_input(model: LoadedModel, image: torch.Tensor) -> torch.Tensor:
    """uint8 1xSxS (from prepare) -> the normalised 1x3xSxS batch the network expects."""
    pre = model.preprocessing
    return data.normalize_batch(image.unsqueeze(0) if image.dim() == 3 else image, pre.mean, pre.std)


@torch.inference_mode()
def predict_probs(model: LoadedModel, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Class probabilities for a uint8 Nx1xSxS tensor (already resized and intensity-adjusted, as by prepare)."""
    with model.lock:
        model.net.eval()
        out = [torch.softmax(model.net(model_input(model, images[i:i + batch_size])), 1)
               for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.classes)))


def predict_split(model: LoadedModel, data_root: str, split: str = "test") -> tuple[np.ndarray, np.ndarray, int]:
    """(labels, probabilities, files skipped) of `model` on one split of a dataset whose classes match the model's."""
    y, logits, skipped, _, _, _ = _split_logits(model, data_root, split, flags=False)
    return y, torch.softmax(torch.from_numpy(logits), 1).numpy(), skipped


def split_logits(model: LoadedModel, data_root: str,
                 split: str = "test") -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
    """(labels, logits float32, files skipped, which images the in-domain check flags or None) of `model` on one
    split of a dataset with the model's classes."""
    y, logits, skipped, _, _, outside = _split_logits(model, data_root, split)
    return y, logits, skipped, outside


def _split_logits(model: LoadedModel, data_root: str, split: str, flags: bool = True):
    """(labels, logits, skipped, root, paths, in-domain flags: None when `flags` is False or there is no check)."""
    from cxrdemo.errors import DatasetError

    scan = data.scan_dataset(data_root, require_train=False)
    if tuple(scan.classes) != tuple(model.classes):
        raise DatasetError(f"The dataset's classes {list(scan.classes)} differ from the model's {list(model.classes)}.")
    items = scan.splits.get(split) or []
    if not items:
        raise DatasetError(f"The dataset {data_root} has no '{split}' images.")
    pre = model.preprocessing
    cached = data.load_images(items, pre.img_size)
    images = data.adjust_intensity(cached.images, pre.intensity)
    with model.lock:
        logits, feats = trust.logits_and_features(model.net, images, pre, layers=trust.layers_of(model.domain))
        scores = trust.domain_scores(model.net, images, pre, model.domain, feats) if flags else None
    outside = trust.outside_domain(model.domain, scores)
    return cached.labels.numpy(), logits, len(cached.skipped), scan.root, cached.paths, outside


def evaluate_run(model: LoadedModel, data_root: str, split: str = "test", out: Path | None = None) -> dict:
    """Metrics of `model` on one split of a dataset (classes must match the model's), ECE and set coverage;
    per-image rows to `out` when given."""
    from cxrdemo.data.naming import image_names

    y, logits, skipped, root, paths, outside = _split_logits(model, data_root, split)
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    result = metrics.classification_metrics(y, probs, model.classes, model.decision.value)
    result["skipped"] = skipped
    if len(y):
        result.update(trust.trust_metrics(logits, y, model.trust, model.decision.value, model.classes,
                                          outside=outside))
    if out is not None:
        names = image_names(root, paths)
        try:
            predictions.write(predictions.from_logits(names, model.classes, y, logits, model.trust.temperature,
                                                      model.decision.value,
                                                      model.trust.conformal.get(conformal.DEFAULT_LEVEL),
                                                      model.trust.bias, outside), Path(out))
        except OSError as exc:
            raise RunError(f"Could not write the per-image predictions to {out}: {exc.strerror or exc}.") from None
        result["predictions_file"] = str(out)
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
    name: str = ""  # the file's name as given (no folder)


def read_radiograph(src: bytes | str | os.PathLike, name: str = "") -> Radiograph:
    """Read an upload (bytes, kept in memory) or a file; ImageReadError with a sentence when it is not an image."""
    raw = bytes(src) if isinstance(src, (bytes, bytearray, memoryview)) else None
    grey, meta = data.read_image(raw if raw is not None else src, name)
    if raw is None:
        with open(src, "rb") as f:
            raw = f.read()
    check = quality.check_radiograph(grey, meta)
    return Radiograph(grey, meta, check.looks_like_cxr, check.warning, digest(raw), Path(str(name)).name)


def prepare(model: LoadedModel, grey: np.ndarray) -> torch.Tensor:
    """A [0, 1] greyscale image -> the uint8 1xSxS tensor this model was trained on (size and intensity step)."""
    pre = model.preprocessing
    return data.adjust_intensity(data.resize_to_uint8(grey, pre.img_size), pre.intensity)


RECIPE_KEYS = ("backbone", "init", "freeze", "epochs", "img_size", "lr", "optimizer", "augment", "balance", "head",
               "threshold")
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auroc", "f1", "n")


def model_summary(model: LoadedModel) -> dict:
    """What a page shows next to a model: its recipe, its test metrics (or {}), classes and decision rule."""
    cfg = model.config or {}
    tm = runs.read_test_metrics(model.path) or _card_metrics(model.path)
    return {
        "run": model.run_id,
        "classes": list(model.classes),
        "recipe": {k: cfg[k] for k in RECIPE_KEYS if k in cfg},
        "test": {k: tm[k] for k in SUMMARY_METRICS if isinstance(tm.get(k), (int, float))},
        "decision": (f"{model.classes[1]} when p({model.classes[1]}) >= {model.threshold:.3f}"
                     + (" (calibrated)" if model.trust.calibrated else "")
                     if model.threshold is not None and len(model.classes) == 2 else "the most probable class"),
        "headlines": headlines(model.path, tm),
    }


def headlines(run_dir: Path, test_metrics: dict | None = None) -> list[dict]:
    """The evaluation sets to show, most shifted first: {label, set, n, metrics, ci95}; a run's own test split
    (in-distribution) when its model card lists none."""
    try:
        evals = runs.read_json(Path(run_dir) / "evaluation.json").get("evaluations") or []
    except RunError:
        evals = []
    out = [{"label": e.get("label", "in-distribution"), "set": f"{Path(e.get('data', '?')).name}/{e.get('split', '?')}",
            "n": e.get("n"), "metrics": e.get("metrics") or {}, "ci95": e.get("ci95") or {}} for e in evals]
    if not out and test_metrics:
        out = [{"label": "in-distribution", "set": "its test split", "n": test_metrics.get("n"),
                "metrics": {k: test_metrics[k] for k in SUMMARY_METRICS if isinstance(test_metrics.get(k), float)},
                "ci95": test_metrics.get("ci95") or _test_intervals(test_metrics)}]
    return sorted(out, key=lambda h: h["label"] != "shifted")


def _test_intervals(tm: dict) -> dict:
    """95% bootstrap intervals from the test split's saved labels and probabilities ({} when they were not saved).

    The one interval computation (metrics.metric_intervals): the lessons and the model cards use it too."""
    y, probs, classes = tm.get("y_true"), tm.get("probs"), tm.get("classes")
    if not (isinstance(y, list) and isinstance(probs, list) and classes and len(y) == len(probs) and y):
        return {}
    try:
        probs = np.asarray(probs, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
    except (TypeError, ValueError):  # a hand-edited file: show the numbers without intervals
        return {}
    if probs.ndim != 2 or probs.shape[1] != len(classes) or y.min() < 0 or y.max() >= len(classes):
        return {}
    threshold = float(tm["threshold"]) if isinstance(tm.get("threshold"), (int, float)) else None
    return {k: [e.low, e.high] for k, e in metrics.metric_intervals(y, probs, classes, threshold).items()}


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
        return checkpoint.model_path(runs.run_dir(run, runs_dir)).stat().st_mtime_ns
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
