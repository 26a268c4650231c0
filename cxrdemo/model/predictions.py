"""Per-image predictions (test_predictions.csv): image name + content hash, true class, probabilities, prediction.

The probabilities a page shows are the calibrated ones (the temperature fitted at finish, as Diagnosis shows
them): `p_<class>`. The network's own softmax stays beside them as `raw_p_<class>` (the reliability diagram
needs both), and `set_90` holds the conformal prediction set at the default 90% coverage when the model has a
usable conformal record ('|' between class names; it always holds the predicted class). The predicted class
is the model's decision rule on the raw scale (the same images cross its calibrated cut). Files written before
calibration had only `p_<class>`, the raw softmax; they read back with `raw` equal to `probs`.
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
from cxrdemo.model import calibration, conformal, metrics

FILE = "test_predictions.csv"
SET_COLUMN = f"set_{round(100 * conformal.DEFAULT_LEVEL)}"
SET_SEP = "|"


@dataclass(frozen=True)
class Predictions:
    """One model's predictions on a set of images, in file order."""

    images: list[str]  # path relative to the dataset root
    hashes: list[str]  # short content hash (data/naming)
    classes: tuple[str, ...]
    y_true: np.ndarray  # int class index
    probs: np.ndarray  # N x K, calibrated when the model has a temperature (what pages show)
    y_pred: np.ndarray  # int class index, by the model's decision rule
    raw: np.ndarray | None = None  # N x K, the network's own softmax (None: same as probs)
    sets: np.ndarray | None = None  # N x K booleans, the prediction set at SET_COLUMN's coverage (None: no record)

    @property
    def keys(self) -> list[tuple[str, str]]:
        """(image, hash) of each row: what matches the same image across runs."""
        return list(zip(self.images, self.hashes))

    @property
    def raw_probs(self) -> np.ndarray:
        """The uncalibrated probabilities (the calibrated ones of a file that kept no others)."""
        return self.probs if self.raw is None else self.raw


def from_logits(names: list[tuple[str, str]], classes: tuple[str, ...], y_true: np.ndarray, logits: np.ndarray,
                temperature: float = 1.0, threshold: float | None = None,
                record: conformal.ConformalRecord | None = None, bias: tuple[float, ...] = (),
                outside: np.ndarray | None = None) -> Predictions:
    """The rows of a model with these records: calibrated and raw probabilities, verdict, prediction set (every
    class for the images the in-domain check flags: `outside`)."""
    logits = np.asarray(logits, dtype=np.float64).reshape(len(names), len(classes))
    raw = calibration.apply_calibration(logits, 1.0)
    cal = calibration.apply_calibration(logits, temperature, bias if len(bias) == len(classes) else None)
    verdicts = metrics.predict_labels(raw, threshold)
    has_sets = record is not None and record.ok and len(names)
    sets = conformal.set_masks(cal, record, verdicts, outside) if has_sets else None
    return Predictions([n for n, _ in names], [h for _, h in names], tuple(classes), np.asarray(y_true, np.int64),
                       cal, verdicts, raw, sets)


def to_csv_text(p: Predictions) -> str:
    """The CSV text: image, hash, true_class, p_<class>..., raw_p_<class>..., set_90, predicted_class."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "hash", "true_class", *[f"p_{c}" for c in p.classes],
                *([f"raw_p_{c}" for c in p.classes] if p.raw is not None else []),
                *([SET_COLUMN] if p.sets is not None else []), "predicted_class"])
    for i in range(len(p.images)):
        w.writerow([p.images[i], p.hashes[i], p.classes[int(p.y_true[i])],
                    *[f"{float(v):.6f}" for v in p.probs[i]],
                    *([f"{float(v):.6f}" for v in p.raw[i]] if p.raw is not None else []),
                    *([SET_SEP.join(c for c, m in zip(p.classes, p.sets[i]) if m)] if p.sets is not None else []),
                    p.classes[int(p.y_pred[i])]])
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
    p_cols = [i for i, h in enumerate(head) if h.startswith("p_")]
    raw_cols = [i for i, h in enumerate(head) if h.startswith("raw_p_")]
    set_col = head.index(SET_COLUMN) if SET_COLUMN in head else None
    classes = tuple(head[i][2:] for i in p_cols)
    index = {c: k for k, c in enumerate(classes)}
    if not classes or (raw_cols and tuple(head[i][6:] for i in raw_cols) != classes):
        raise RunError(f"{path.name} in {path.parent.name} is damaged (its probability columns do not match).")
    try:
        body = [r for r in rows[1:] if r]
        if any(len(r) != len(head) for r in body):
            raise ValueError("a row is not as long as the header")
        y_true = np.array([index[r[2]] for r in body], dtype=np.int64)
        y_pred = np.array([index[r[-1]] for r in body], dtype=np.int64)
        probs, raw = (np.array([[float(r[i]) for i in cols] for r in body], dtype=np.float64).reshape(len(body), len(cols))
                      for cols in (p_cols, raw_cols))
        sets = None
        if set_col is not None:
            sets = np.zeros((len(body), len(classes)), bool)
            for n, r in enumerate(body):
                sets[n, [index[c] for c in r[set_col].split(SET_SEP)]] = True
    except (KeyError, ValueError, IndexError):
        raise RunError(f"{path.name} in {path.parent.name} is damaged (a row does not fit its header).") from None
    return Predictions([r[0] for r in body], [r[1] for r in body], classes, y_true, probs, y_pred,
                       raw if raw_cols else None, sets)
