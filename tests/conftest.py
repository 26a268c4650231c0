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


@pytest.fixture(scope="session")
def compare_store(tiny_dataset, tmp_path_factory) -> dict:
    """A run store with completed, gradual, running, failed, damaged and 4-class runs (trained once per session)."""
    from tests.helpers import build_compare_store

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRDEMO_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return build_compare_store(tmp_path_factory.mktemp("compare") / "runs", Path(tiny_dataset))


# ---- end of data fixtures -------------------------------------------------------------------------

# ======================================================================== diagnosis (issue #5) — begin
# A tiny cnn8 trained in memory on a synthetic "bright patch" task (class 1: a bright square at a random
# place on a noisy dark background; class 0: background only), and a run store holding it as a completed run.
import numpy as _np
import pytest as _pytest

from tests.helpers import PATCH_SIZE, patch_image, save_patch_run  # noqa: F401 - plain functions live in helpers


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
def patch_store(patch_model, store):
    """conftest's private run store with the patch model as one completed run (and no demo model).

    Returns a namespace: root (the store), run (the run folder), add(name) -> the folder of one more such run.
    """
    from types import SimpleNamespace

    return SimpleNamespace(root=store, run=save_patch_run(patch_model, store),
                           add=lambda name: save_patch_run(patch_model, store, name))


# ======================================================================== diagnosis (issue #5) — end


# ======================================================================== run stores (shared)
@pytest.fixture
def store_home(tmp_path) -> Path:
    """The folder that holds a test's run store, image cache and weights; a module overrides it to move them."""
    return tmp_path


@pytest.fixture
def run_store(store_home, monkeypatch) -> Path:
    """An empty private run store (HOME/runs) with its own image cache (HOME/cache); the demo model and ImageNet
    files stay where they are. For the tests that need them: most want `store`."""
    root = store_home / "runs"
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(root))
    monkeypatch.setenv("CXRDEMO_CACHE_DIR", str(store_home / "cache"))
    return root


@pytest.fixture
def store(run_store, store_home, monkeypatch):
    """The private run store for tests that train or start jobs; any job still active at the end is stopped.

    No ImageNet files and no demo model (an empty weights folder, HOME/weights), offline, workers at normal
    priority.
    """
    from cxrdemo.errors import RunError
    from cxrdemo.runs import jobs
    from cxrdemo.runs import store as runs

    (store_home / "weights").mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("CXRDEMO_WEIGHTS_DIR", str(store_home / "weights"))
    monkeypatch.setenv("CXRDEMO_OFFLINE", "1")
    monkeypatch.setenv("CXRDEMO_JOB_NICE", "0")  # shared CI machines: do not make the tests wait longer
    yield run_store
    for info in runs.list_runs(run_store):
        if info.state in runs.ACTIVE:
            try:
                jobs.cancel(info.run_id, run_store, grace_s=1)
            except (RunError, OSError):  # a test may have made the store unwritable on purpose (still patched here)
                pass


@pytest.fixture
def cold_image_memo():
    """The in-process image memo starts and ends empty: a test decodes its images afresh and leaves none behind."""
    from cxrdemo import data

    data.cache._MEMO.clear()
    yield
    data.cache._MEMO.clear()


# ======================================================================== lesson examples (issue 20) — begin
@pytest.fixture(autouse=True)
def no_shipped_examples(tmp_path_factory, monkeypatch):
    """Pages see no shipped example runs unless a test writes its own: tests never depend on the real examples."""
    monkeypatch.setenv("CXRDEMO_EXAMPLES_DIR", str(tmp_path_factory.getbasetemp() / "no-examples"))
# ======================================================================== lesson examples (issue 20) — end
