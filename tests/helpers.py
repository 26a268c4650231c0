"""Small helpers shared by the test modules that drive real background processes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def server_address(address: str) -> Iterator[None]:
    """Streamlit's server.address while pages run under AppTest ("0.0.0.0": a classroom; "localhost": a desktop)."""
    from streamlit import config as st_config

    old = st_config.get_option("server.address")
    st_config.set_option("server.address", address)
    try:
        yield
    finally:
        st_config.set_option("server.address", old)


def page_browser(at) -> str:
    """The hashed id of the browser an AppTest page runs as (its `sid` query parameter), as jobs record it."""
    from cxrdemo.views import classroom as cls

    sid = at.query_params["sid"]
    return cls.browser_tag(sid[0] if isinstance(sid, list) else sid)


def wait_for(pred: Callable[[], T], timeout: float = 90.0, step: float = 0.1) -> T:
    """Poll `pred` until it returns something truthy (returned); fail the test after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def make_layout_dataset(root, layout: dict[str, int], size: int = 40, seed: int = 0, step: int = 90,
                        name: str = "im{i:03d}.png"):
    """layout {'train/A': 4, ...}: noisy PNGs whose brightness rises by `step` per class (sorted names): learnable."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    classes = sorted({Path(f).name for f in layout})
    for folder, n in layout.items():
        d = Path(root) / folder
        d.mkdir(parents=True, exist_ok=True)
        cls = Path(folder).name
        for i in range(n):
            img = (rng.integers(0, 120, (size, size)) + step * classes.index(cls)).astype("uint8")
            Image.fromarray(img).save(d / name.format(cls=cls, i=i))
    return root


def make_split_dataset(root, per_split: tuple[int, int, int] = (5, 2, 2), size: int = 40):
    """A learnable 2-class split-layout dataset of PNGs (dark NORMAL, bright PNEUMONIA): train/val/test counts per class."""
    layout = {f"{split}/{cls}": n for split, n in zip(("train", "val", "test"), per_split) for cls in ("NORMAL", "PNEUMONIA")}
    return make_layout_dataset(root, layout, size, step=100, name="{cls}-{i}.png")


def make_square_dataset(root, classes=("NORMAL", "PNEUMONIA"), per_split=(10, 4, 4), size: int = 48, seed: int = 0,
                        top: int = 6):
    """train/val/test PNGs of dim noise; class k > 0 has a bright 12x20 square at row top + 8 (k - 1): learnable in a
    few steps (the first class has none)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val", "test"), per_split):
        for k, cls in enumerate(classes):
            d = Path(root) / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = (rng.random((size, size)) * 60 + 30).astype(np.uint8)
                if k:
                    y = top + 8 * (k - 1) % (size - 16)
                    a[y:y + 12, 10:30] = 240
                Image.fromarray(a).save(d / f"{cls}_{i}.png")
    return root


def tiny_config(data, **kw):
    """A TrainConfig that trains in seconds on a make_split_dataset folder (cnn8, 32 px, one epoch); `kw` wins."""
    from cxrdemo.config import TrainConfig

    return TrainConfig(**{"data": str(data), "backbone": "cnn8", "img_size": 32, "epochs": 1, "batch_size": 8,
                          "patience": 0, **kw})


def fake_status(run_dir, **fields) -> dict:
    """Write status.json fields as some worker would have (a fixture: any state, no lifecycle transition checked)."""
    from pathlib import Path

    from cxrdemo import fileio
    from cxrdemo.errors import RunError

    path = Path(run_dir) / "status.json"
    try:
        status = fileio.read_json(path)
    except RunError:
        status = {}
    status.update(fields, updated=time.time())
    fileio.atomic_write_json(path, status)
    return status


def imported_modules(code: str, pythonpath: tuple = (), env: dict | None = None) -> set[str]:
    """The modules a fresh interpreter holds after running `code` (this checkout first on the path)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([*map(str, pythonpath), str(repo)])
    script = f"{code}\nimport json as _j, sys as _s\nprint(_j.dumps(sorted(_s.modules)))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=repo, check=False,
                          env={**os.environ, "PYTHONPATH": path, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def torch_modules(code: str, pythonpath: tuple = (), env: dict | None = None) -> list[str]:
    """The torch modules (torch, torchvision, ...) that running `code` in a fresh interpreter loads; [] when none."""
    return sorted(m for m in imported_modules(code, pythonpath, env) if m.split(".")[0] in ("torch", "torchvision"))


# ---------------------------------------------------------------- the patch task (diagnosis tests)

PATCH_SIZE = 64
PATCH_SIDE = 14


def patch_image(rng, with_patch: bool, size: int = PATCH_SIZE):
    """(uint8 HxW image, (top, left, side) of the patch or None)."""
    import numpy as np

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
    lo, hi = np.percentile(img, [0.1, 99.9])
    img = np.clip((img - lo) / (hi - lo), 0, 1)
    return (img * 255).round().astype(np.uint8), box


def make_patch_dataset(root, per_split: dict[str, int], seed: int):
    """{split: n}: n PNGs of patch_image per class (blank, patch) in each split folder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in per_split.items():
        for k, cls in enumerate(("blank", "patch")):
            (Path(root) / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(patch_image(rng, k == 1)[0]).save(Path(root) / split / cls / f"{i}.png")
    return root


def save_patch_run(patch_model, runs_root, name: str = "patch"):
    """Write `patch_model` into the store `runs_root` as a completed run with test metrics; return its folder."""
    import numpy as np
    import torch

    from cxrdemo.config import TrainConfig
    from cxrdemo.diagnosis.predict import predict_probs
    from cxrdemo.model import checkpoint, metrics
    from cxrdemo.runs import store as runs

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


# ---------------------------------------------------------------- the Compare tests' run store

FOUR = ["COVID", "Lung_Opacity", "Normal", "Viral"]


def _fake_run(root: Path, config, summary: dict, name: str) -> Path:
    from cxrdemo.runs import store as runs

    return runs.create_run(config, root, scan_summary=summary, name=name)


def build_compare_store(root: Path, dataset: Path) -> dict:
    """A run store with completed, gradual, running, failed, damaged and 4-class runs: {kind: run_id} plus the root."""
    import os

    import numpy as np

    from cxrdemo.model import metrics
    from cxrdemo.runs import store as runs
    from cxrdemo.runs.worker import execute_run

    cfg = tiny_config(dataset, epochs=2, threads=1)
    done = runs.create_run(cfg, root, name="done")
    assert execute_run(done, runs_dir=root)["state"] == "completed"
    summary = runs.read_json(done / "config.json")["dataset"]
    grad = runs.create_run(cfg.replace(freeze="gradual:1"), root, name="grad")
    assert execute_run(grad, runs_dir=root)["state"] == "completed"

    running = _fake_run(root, cfg.replace(epochs=5), summary, "live")
    fake_status(running, state="running", pid=os.getpid(), started=time.time(), heartbeat=time.time(),
                epoch=1, epochs=5, phase="train", batch=2, batches=4)
    runs.append_metrics(running, {"epoch": 1, "train_loss": 0.71, "val_loss": 0.69, "train_acc": 0.5,
                                  "val_acc": 0.625, "seconds": 0.4, "trainable_params": 1234})

    failed = _fake_run(root, cfg.replace(lr=5.0), summary, "failed")
    fake_status(failed, state="failed",
                error="The training loss became infinite or NaN: lower the learning rate.")

    damaged = root / "20000101-000000-cnn8-broken"
    damaged.mkdir()
    (damaged / "config.json").write_text("{not json")
    runs.atomic_write_json(damaged / "status.json", {"state": "completed"})

    four = _fake_run(root, cfg.replace(data="/data/covid4", backbone="cnn5", freeze="head"),
                     {"root": "/data/covid4", "classes": FOUR}, "four")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 3)
    probs = rng.dirichlet(np.ones(4), size=len(y))
    probs[np.arange(len(y)), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    for e, (tl, vl) in enumerate(((1.3, 1.25), (1.1, 1.2)), 1):
        runs.append_metrics(four, {"epoch": e, "train_loss": tl, "val_loss": vl, "train_acc": 0.3 * e,
                                   "val_acc": 0.25 * e, "seconds": 1.5 * e})
    test4 = metrics.classification_metrics(y, probs, FOUR)
    test4.update(y_true=y.tolist(), probs=probs.round(6).tolist(), threshold=None, best_epoch=2)
    runs.atomic_write_json(four / "test_metrics.json", test4)
    fake_status(four, state="completed", started=time.time())
    ids = {k: d.name for k, d in (("done", done), ("grad", grad), ("running", running), ("failed", failed),
                                  ("damaged", damaged), ("four", four))}
    return {"root": root, **ids}
