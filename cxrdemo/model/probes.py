"""The probe timelapse: a fixed panel of validation images whose answer and heatmap are kept after every epoch.

A run folder's probes/ holds panel.npz once (names, classes, true labels, small thumbnails, so a run shipped
without its dataset still shows them) and epoch-NNN.npz per epoch (class probabilities and a low-resolution
Grad-CAM of the predicted class). The panel is chosen by the run's seed: the same seed follows the same images.
The heatmap is computed through pytorch-grad-cam (as a context manager, so its hooks are released) on the
network the epoch validated, in eval mode, outside inference mode; the network's own flags are restored.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrdemo import fileio
from cxrdemo.config import TrainConfig
from cxrdemo.data.cache import CachedImages
from cxrdemo.data.naming import image_names
from cxrdemo.errors import RunError
from cxrdemo.model import backbones, cam

FOLDER = "probes"
HEATMAP_PX = 32  # a heatmap of 32x32 is what the eye can read at strip size; 1 KB per probe per epoch
THUMB_PX = 64
_EPOCH_RE = re.compile(r"^epoch-(\d{3,})\.npz$")


@dataclass
class Panel:
    """The probe images of a run being trained: where they go and their pixels as the network sees them."""

    folder: Path
    images: torch.Tensor  # uint8 P x 1 x S x S, preprocessed like the validation split
    activations: torch.Tensor | None = None  # at the CAM layer, kept while the whole trunk is frozen
    indices: tuple[int, ...] = ()  # the probes' rows in the validation split, ascending
    source_rows: int = 0  # how many images the validation split has


@dataclass(frozen=True)
class Timeline:
    """A run's probes over its epochs, as read back from its folder."""

    names: list[str]
    classes: tuple[str, ...]
    labels: np.ndarray  # P true class indices
    thumbnails: np.ndarray  # P x THUMB_PX x THUMB_PX uint8
    epochs: list[int]
    probs: np.ndarray  # E x P x K
    heatmaps: np.ndarray  # E x P x HEATMAP_PX x HEATMAP_PX uint8 (0..255)


def choose_probes(labels: np.ndarray, per_class: int, seed: int) -> list[int]:
    """Indices of `per_class` images of each class (fewer when a class has fewer), chosen by `seed`, sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        chosen += rng.choice(idx, size=min(per_class, len(idx)), replace=False).tolist()
    return sorted(int(i) for i in chosen)


def _shrink(images: torch.Tensor, px: int) -> np.ndarray:
    """N x 1 x S x S (any dtype) -> N x px x px uint8 by area averaging."""
    small = torch.nn.functional.adaptive_avg_pool2d(images.float(), px)[:, 0]
    return small.round().clamp(0, 255).to(torch.uint8).numpy()


def start_panel(run_dir: Path, config: TrainConfig, val: CachedImages, root: str,
                classes: tuple[str, ...]) -> Panel | None:
    """Choose the probe panel from the validation split and write panel.npz; None when probes are off."""
    if not config.probes or not len(val.labels):
        return None
    idx = choose_probes(val.labels.numpy(), config.probes, config.seed)
    # pytorch-grad-cam (with matplotlib, OpenCV) loads while the first epoch trains, not in its probe step
    threading.Thread(target=importlib.import_module, args=("pytorch_grad_cam",), name="probe-import",
                     daemon=True).start()
    images = val.images[idx]
    folder = fileio.own_folder(Path(run_dir) / FOLDER)  # a link to elsewhere would take the panel out of the run
    names = image_names(root, [val.paths[i] for i in idx])
    _save(folder / "panel.npz", names=np.array([n for n, _ in names]), hashes=np.array([h for _, h in names]),
          classes=np.array(classes), labels=val.labels[idx].numpy(), thumbnails=_shrink(images, THUMB_PX))
    return Panel(folder, images, indices=tuple(idx), source_rows=len(val.labels))


def _save(path: Path, **arrays: np.ndarray) -> None:
    with fileio.atomic_file(path) as f:
        np.savez_compressed(f, **arrays)


def heatmaps(net: backbones.Net, x: torch.Tensor, activations: torch.Tensor | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities P x K, Grad-CAM of each image's highest-scoring class P x HEATMAP_PX x HEATMAP_PX uint8);
    `activations`: the CAM layer's output for `x` when known (the trunk is then not run again)."""
    # imported here: a run with probes off, and a worker starting up, never load it
    from pytorch_grad_cam import GradCAM

    maps, logits = cam.run(net, x, GradCAM, None, activations=activations, method="GradCAM")
    return torch.softmax(logits.cpu(), 1).numpy(), _shrink(torch.from_numpy(maps)[:, None] * 255, HEATMAP_PX)


def _activations(net: backbones.Net, x: torch.Tensor) -> torch.Tensor:
    """The CAM layer's output for `x`, in eval mode."""
    was_training = net.training
    try:
        net.eval()
        with torch.inference_mode(False), torch.no_grad(), cam.keep_activations(net) as found:
            net(x.clone())
    finally:
        net.train(was_training)
    return found[0]


@contextlib.contextmanager
def capture_activations(panel: Panel | None, net: backbones.Net) -> Iterator[None]:
    """Keep the probes' CAM-layer output from a pass over the whole validation split in order (batch after batch).

    The head-only path runs the frozen trunk over every validation image once; reading the probes' rows off
    that pass spares a second forward of the panel. Anything but one call per batch covering each row once
    (a layer the pass never reaches) leaves `panel.activations` unset: `record_epoch` computes it then.
    """
    if panel is None or not panel.indices:
        yield
        return
    wanted, seen, kept = panel.indices, [0], []

    def keep(module, args, out) -> None:
        lo, hi = seen[0], seen[0] + len(out)
        rows = [i - lo for i in wanted if lo <= i < hi]
        if rows:
            kept.append(out[rows].detach().float().clone())
        seen[0] = hi

    hook = backbones.cam_target_layer(net).register_forward_hook(keep)
    try:
        yield
    finally:
        hook.remove()
    found = torch.cat(kept) if kept else None
    if found is not None and len(found) == len(wanted) and seen[0] == panel.source_rows:
        panel.activations = found


def record_epoch(panel: Panel, net: backbones.Net, inputs, epoch: int, trunk_frozen: bool = False) -> float:
    """Write probes/epoch-NNN.npz for `net` after `epoch`; returns the seconds it took.

    With the whole trunk frozen the CAM layer's output cannot change: it is computed once, and each epoch
    runs Grad-CAM on the few layers from there to the logits only (head-only training stays cheap).
    """
    t0 = time.perf_counter()
    x = inputs(panel.images)
    if not trunk_frozen or cam.suffix(net) is None:
        panel.activations = None
    elif panel.activations is None:
        panel.activations = _activations(net, x)
    probs, maps = heatmaps(net, x, panel.activations)
    _save(panel.folder / f"epoch-{epoch:03d}.npz", probs=probs.astype(np.float32), heatmaps=maps)
    return round(time.perf_counter() - t0, 4)


def read_timeline(run_dir: Path) -> Timeline | None:
    """The probes of a run folder; None when it has none (probes off, or trained before they existed)."""
    folder = Path(run_dir) / FOLDER
    if not (folder / "panel.npz").is_file():
        return None
    try:
        with np.load(folder / "panel.npz") as z:
            names, classes, labels, thumbs = ([str(n) for n in z["names"]], tuple(str(c) for c in z["classes"]),
                                              z["labels"].astype(np.int64), z["thumbnails"])
        epochs, probs, maps = [], [], []
        for f in sorted(folder.iterdir()):
            m = _EPOCH_RE.match(f.name)
            if m:
                with np.load(f) as z:
                    probs.append(z["probs"])
                    maps.append(z["heatmaps"])
                epochs.append(int(m.group(1)))
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"The probe files of run {Path(run_dir).name} are damaged ({exc.__class__.__name__}).") \
            from None
    p, k = len(names), len(classes)
    return Timeline(names, classes, labels, thumbs, epochs,
                    np.stack(probs) if probs else np.zeros((0, p, k), np.float32),
                    np.stack(maps) if maps else np.zeros((0, p, HEATMAP_PX, HEATMAP_PX), np.uint8))
