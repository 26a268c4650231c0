"""A split's evaluation, done in one place: images -> one forward pass -> metrics, trust metrics, per-image file.

Training's `finish` (the test split), the `evaluate` command, the demo model's card and the measurement scripts
all come here, so a number in test_metrics.json, in `evaluate`'s JSON and in a measurement page is computed the
same way. The split's images are loaded through the model file's preprocessing record (`load_split`); one pass
gives the logits and the in-domain flags (`forward_split`); `evaluate_split` adds the metrics and writes the rows.
An image the in-domain check flags is outside the sets' promise: its set is every class ("both"), in the coverage
and in the per-image file alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrdemo import data
from cxrdemo.data.naming import image_names
from cxrdemo.errors import DatasetError
from cxrdemo.model import conformal, metrics, predictions, trust
from cxrdemo.model.backbones import Net
from cxrdemo.model.checkpoint import Preprocessing
from cxrdemo.model.domain import DomainRecord


def load_split(pre: Preprocessing, classes: tuple[str, ...], data_root: str | Path, split: str = "test",
               seed: int = 0) -> tuple[data.CachedImages, str]:
    """(the split's images prepared by `pre`, the dataset root) of a dataset with these classes; DatasetError with a
    sentence when the classes differ or the split is empty."""
    scan = data.scan_dataset(data_root, seed=seed, require_train=False)
    if tuple(scan.classes) != tuple(classes):
        raise DatasetError(f"The dataset's classes {list(scan.classes)} differ from the model's {list(classes)}.")
    items = scan.splits.get(split) or []
    if not items:
        raise DatasetError(f"The dataset {data_root} has no '{split}' images.")
    return pre.load(items), scan.root


@dataclass(frozen=True)
class SplitOutputs:
    """What one pass of the network over a split gives: its labels, logits and the in-domain flags."""

    labels: np.ndarray  # N class indices
    logits: np.ndarray  # N x K float32, bit-identical to net(x) in eval mode
    outside: np.ndarray | None  # N booleans, the images the in-domain check flags (None: no check)

    @property
    def probs(self) -> np.ndarray:
        """The network's own softmax (N x K float32), as training's evaluate computes it."""
        return torch.softmax(torch.from_numpy(self.logits), 1).numpy()

    def loss(self) -> float:
        """Mean cross-entropy of the softmax (NaN for no image), as training's evaluate computes it."""
        if not len(self.labels):
            return float("nan")
        p = torch.from_numpy(self.probs)
        return float(torch.nn.functional.nll_loss(torch.log(p.clamp_min(1e-12)), torch.from_numpy(self.labels)))


def forward_split(net: Net, pre: Preprocessing, images: data.CachedImages,
                  record: DomainRecord | None = None) -> SplitOutputs:
    """One pass over prepared images: logits, and the in-domain flags when `record` is given."""
    logits, feats = trust.logits_and_features(net, images.images, pre, layers=trust.layers_of(record))
    outside = trust.outside_domain(record, trust.domain_scores(net, images.images, pre, record, feats))
    return SplitOutputs(images.labels.numpy(), logits, outside)


def evaluate_split(net: Net, pre: Preprocessing, classes: tuple[str, ...], threshold: float | None,
                   fitted: trust.Trust, images: data.CachedImages, *, root: str = "", out: Path | None = None,
                   resamples: int = 2000) -> tuple[dict, SplitOutputs]:
    """(metrics with the trust metrics, the pass's outputs) of a model on a split's prepared images; the per-image
    rows (calibrated probabilities, verdict, 90% set) go to `out` when given, named relative to `root`.

    `threshold` is the model file's decision value (uncalibrated p(class 1) cut; None: argmax); `fitted` its trust
    records. OSError from writing `out` propagates (a run's worker words it)."""
    outputs = forward_split(net, pre, images, fitted.domain)
    y, logits = outputs.labels, outputs.logits
    result = metrics.classification_metrics(y, outputs.probs, classes, threshold)
    if len(y):
        result.update(trust.trust_metrics(logits, y, fitted, threshold, tuple(classes), resamples, outputs.outside))
    if out is not None:
        predictions.write(predictions.from_logits(
            image_names(root, images.paths), tuple(classes), y, logits, fitted.temperature, threshold,
            fitted.conformal.get(conformal.DEFAULT_LEVEL), fitted.bias, outputs.outside), Path(out))
    return result, outputs
