"""Shared pytest fixtures. Each engineer's fixtures live in their own delimited section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrdemo.paths import DEMO_DATA_DIR

# ---- data fixtures (owner: data/imageio/quality) -------------------------------------------------


def _tiny_image(rng: np.random.Generator, blob: bool, size: int = 64) -> np.ndarray:
    """A smooth noisy background; PNEUMONIA images get a bright blob, so the task is learnable."""
    y, x = np.mgrid[:size, :size] / size
    img = 0.35 + 0.15 * np.sin(3 * x + rng.uniform(0, 3)) + 0.05 * rng.standard_normal((size, size))
    if blob:
        cy, cx = rng.uniform(0.3, 0.7, 2)
        img += 0.5 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.08**2))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.png: 8 / 4 / 4 images of 64x64 px per class."""
    root = tmp_path_factory.mktemp("tiny_dataset")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        for cls in ("NORMAL", "PNEUMONIA"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_tiny_image(rng, cls == "PNEUMONIA")).save(folder / f"{cls.lower()}_{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def demo_data_dir() -> Path:
    """The built-in demo dataset shipped in the package."""
    return DEMO_DATA_DIR


# ---- end of data fixtures -------------------------------------------------------------------------

# ======================================================================== diagnosis (issue #5) — begin
# A tiny cnn8 trained in memory on a synthetic "bright patch" task (class 1: a bright square at a random
# place on a noisy dark background; class 0: background only), and a run store holding it as a completed run.
import numpy as _np
import pytest as _pytest

PATCH_SIZE = 64
PATCH_SIDE = 14


def patch_image(rng, with_patch: bool, size: int = PATCH_SIZE):
    """(uint8 HxW image, (top, left, side) of the patch or None)."""
    img = rng.normal(0.25, 0.06, (size, size)).clip(0, 1)
    # a bright marker strip (like a film's label) in both classes: it fixes the contrast stretch below, so
    # the background looks the same in both and only the patch tells the classes apart
    img[size - 2:, : size // 2] = 0.85
    box = None
    if with_patch:
        top, left = (int(v) for v in rng.integers(2, size - PATCH_SIDE - 2, 2))
        img[top:top + PATCH_SIDE, left:left + PATCH_SIDE] = rng.normal(0.85, 0.05, (PATCH_SIDE, PATCH_SIDE)).clip(0, 1)
        box = (top, left, PATCH_SIDE)
    # stretched as data.read_image stretches every file (0.1 / 99.9 percentiles), so that the pixels a test
    # feeds the model directly are the pixels the same image gives after a PNG or DICOM round trip
    lo, hi = _np.percentile(img, [0.1, 99.9])
    img = _np.clip((img - lo) / (hi - lo), 0, 1)
    return (img * 255).round().astype(_np.uint8), box


@_pytest.fixture(scope="session")
def patch_model():
    """A LoadedModel (cnn8, 64 px, classes blank/patch) that finds bright patches, fitted in about two seconds.

    The recipe is `freeze head`: the (random) trunk stays fixed and only the linear head is fitted, by L-BFGS on
    the pooled features. Training the whole cnn8 at 64 px takes ~40 s on two busy cores; this keeps the test
    suite fast while the heatmap still has to find the patch through every layer of the real network.
    """
    from pathlib import Path

    import torch

    from cxrdemo import data
    from cxrdemo.diagnosis.predict import LoadedModel
    from cxrdemo.model import backbones
    from cxrdemo.model.checkpoint import Decision, Preprocessing

    torch.manual_seed(0)
    rng = _np.random.default_rng(0)
    n = 96
    x = torch.from_numpy(_np.stack([patch_image(rng, i % 2 == 1)[0] for i in range(n)]))[:, None]
    y = torch.tensor([i % 2 for i in range(n)])
    net = backbones.build_backbone("cnn8", 2).eval()
    net.set_freeze(len(net.trunk))
    pooled = net.pool(net.frozen_features(data.normalize_batch(x, data.IMAGENET_MEAN, data.IMAGENET_STD)))
    opt = torch.optim.LBFGS(net.head.parameters(), lr=1, max_iter=15, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net.head(pooled), y)
        loss.backward()
        return loss

    opt.step(closure)  # 15 iterations: separates the classes with probabilities short of 0 and 1
    net.requires_grad_(False)
    return LoadedModel(net, ("blank", "patch"), Preprocessing(PATCH_SIZE), Decision(), "patch-model", Path("."),
                       {"backbone": "cnn8", "init": "scratch", "freeze": "head", "epochs": 1, "img_size": PATCH_SIZE})


@_pytest.fixture
def make_patch_image():
    """patch_image(rng, with_patch, size=64) -> (uint8 image, box)."""
    return patch_image


@_pytest.fixture
def patch_store(patch_model, tmp_path, monkeypatch):
    """An isolated run store with the patch model as one completed run and no demo model.

    Returns a namespace: root (the store), run (the run folder), add(name) -> the folder of one more such run.
    """
    from types import SimpleNamespace

    root = tmp_path / "runs"
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(root))
    monkeypatch.setenv("CXRDEMO_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("CXRDEMO_CACHE_DIR", str(tmp_path / "cache"))
    return SimpleNamespace(root=root, run=save_patch_run(patch_model, root),
                           add=lambda name: save_patch_run(patch_model, root, name))


def save_patch_run(patch_model, runs_root, name: str = "patch"):
    """Write `patch_model` into the store `runs_root` as a completed run with test metrics; return its folder."""
    import numpy as np
    import torch

    from cxrdemo.config import TrainConfig
    from cxrdemo.diagnosis.predict import predict_probs
    from cxrdemo.model import checkpoint, metrics
    from cxrdemo.runs import store as runs
    from tests.helpers import fake_status

    cfg = TrainConfig(backbone="cnn8", img_size=PATCH_SIZE, epochs=1, freeze="head", data="synthetic-patches")
    d = runs.create_run(cfg, runs_root, name=name)
    state = {k: v.contiguous() for k, v in patch_model.net.state_dict().items()}
    checkpoint.save(checkpoint.ModelFile(cfg.backbone, patch_model.classes, state, patch_model.preprocessing,
                                         epoch=1, val_loss=0.1, train_path="cached-features", config=cfg.to_dict()),
                    d / checkpoint.MODEL_FILE)
    rng = np.random.default_rng(1)
    imgs = [patch_image(rng, i % 2 == 1)[0] for i in range(20)]
    probs = predict_probs(patch_model, torch.from_numpy(np.stack(imgs))[:, None])
    tm = metrics.classification_metrics(np.arange(20) % 2, probs, patch_model.classes)
    runs.atomic_write_json(d / "test_metrics.json", tm)
    fake_status(d, state="completed", epoch=1)
    return d
# ======================================================================== diagnosis (issue #5) — end


# ======================================================================== job store (shared)
@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private run store for tests that start real jobs; any job still active at the end is stopped.

    No ImageNet files and no demo model (empty weights folder), offline, workers at normal priority.
    """
    from cxrdemo.errors import RunError
    from cxrdemo.runs import jobs
    from cxrdemo.runs import store as runs

    root = tmp_path / "runs"
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(root))
    monkeypatch.setenv("CXRDEMO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXRDEMO_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("CXRDEMO_OFFLINE", "1")
    monkeypatch.setenv("CXRDEMO_JOB_NICE", "0")  # shared CI machines: do not make the tests wait longer
    yield root
    for info in runs.list_runs(root):
        if info.state in runs.ACTIVE:
            try:
                jobs.cancel(info.run_id, root, grace_s=1)
            except RunError:
                pass


# ======================================================================== lesson examples (issue 20) — begin
@pytest.fixture(autouse=True)
def no_shipped_examples(tmp_path_factory, monkeypatch):
    """Pages see no shipped example runs unless a test writes its own: tests never depend on the real examples."""
    monkeypatch.setenv("CXRDEMO_EXAMPLES_DIR", str(tmp_path_factory.getbasetemp() / "no-examples"))
# ======================================================================== lesson examples (issue 20) — end
