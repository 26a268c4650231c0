"""Per-image predictions (test_predictions.csv): image name + content hash, true class, probabilities, prediction.

Stored as plain CSV; spreadsheet escaping (views/text.safe_csv_cell) happens only when a page exports it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrdemo import fileio
from cxrdemo.errors import RunError

FILE = "test_predictions.csv"


@dataclass(frozen=True)
class Predictions:
    """One model's predictions on a set of images, in file order."""

    images: list[str]  # path relative to the dataset root
    hashes: list[str]  # short content hash (data/naming)
    classes: tuple[str, ...]
    y_true: np.ndarray  # int class index
    probs: np.ndarray  # N x K
    y_pred: np.ndarray  # int class index, by the model's decision rule

    @property
    def keys(self) -> list[tuple[str, str]]:
        """(image, hash) of each row: what matches the same image across runs."""
        return list(zip(self.images, self.hashes))


def to_csv_text(p: Predictions) -> str:
    """The CSV text: image, hash, true_class, p_<class>..., predicted_class."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "hash", "true_class", *[f"p_{c}" for c in p.classes], "predicted_class"])
    for i in range(len(p.images)):
        w.writerow([p.images[i], p.hashes[i], p.classes[int(p.y_true[i])],
                    *[f"{float(v):.6f}" for v in p.probs[i]], p.classes[int(p.y_pred[i])]])
    return buf.getvalue()


def write(p: Predictions, path: Path) -> None:
    """Write atomically to `path`."""
    fileio.atomic_write_bytes(Path(path), to_csv_text(p).encode())


def read(path: Path) -> Predictions:
    """Read a file written by `write`; RunError with a sentence when it is missing or damaged."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise RunError(f"{path.parent.name} has no per-image predictions ({path.name}): it was trained before "
                       "they were saved, or it has no test images.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{path.name} in {path.parent.name} cannot be read ({exc.__class__.__name__}).") from None
    head = rows[0] if rows else []
    if len(head) < 5 or head[:3] != ["image", "hash", "true_class"] or head[-1] != "predicted_class":
        raise RunError(f"{path.name} in {path.parent.name} is not a predictions file.")
    classes = tuple(h[2:] for h in head[3:-1])
    index = {c: k for k, c in enumerate(classes)}
    try:
        body = [r for r in rows[1:] if r]
        y_true = np.array([index[r[2]] for r in body], dtype=np.int64)
        y_pred = np.array([index[r[-1]] for r in body], dtype=np.int64)
        probs = np.array([[float(v) for v in r[3:-1]] for r in body], dtype=np.float64).reshape(len(body), len(classes))
    except (KeyError, ValueError, IndexError):
        raise RunError(f"{path.name} in {path.parent.name} is damaged (a row does not fit its header).") from None
    return Predictions([r[0] for r in body], [r[1] for r in body], classes, y_true, probs, y_pred)
