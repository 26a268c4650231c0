"""Load a run's model once, preprocess exactly as it was trained, predict."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cxrdemo import data, metrics, runs
from cxrdemo.backbones import Net
from cxrdemo.errors import RunError


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

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Class indices by the model's own rule (saved threshold, else argmax)."""
        return metrics.predict_labels(np.atleast_2d(probs), self.threshold)


@functools.lru_cache(maxsize=8)
def _load(model_file: str, mtime_ns: int) -> LoadedModel:
    from cxrdemo.train import load_net

    path = Path(model_file)
    ckpt = runs.load_checkpoint(path)
    net = load_net(ckpt)
    net.requires_grad_(False)
    pre = ckpt.get("preprocessing") or {}
    return LoadedModel(net, tuple(ckpt["classes"]), int(pre.get("img_size", 224)), ckpt.get("threshold"),
                       path.parent.name, path.parent, ckpt.get("config") or {})


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
    model.net.eval()
    out = [torch.softmax(model.net(data.normalize_batch(images[i:i + batch_size])), 1)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.classes)))


def evaluate_run(model: LoadedModel, data_root: str, split: str = "test") -> dict:
    """Metrics of `model` on one split of a dataset (classes must match the model's)."""
    from cxrdemo.errors import DatasetError

    scan = data.scan_dataset(data_root)
    if tuple(scan.classes) != tuple(model.classes):
        raise DatasetError(f"The dataset's classes {list(scan.classes)} differ from the model's {list(model.classes)}.")
    items = scan.splits.get(split) or []
    if not items:
        raise DatasetError(f"The dataset {data_root} has no '{split}' images.")
    cached = data.load_images(items, model.img_size)
    probs = predict_probs(model, cached.images)
    result = metrics.classification_metrics(cached.labels.numpy(), probs, model.classes, model.threshold)
    result["skipped"] = len(cached.skipped)
    return result
