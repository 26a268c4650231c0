"""Small helpers shared by the test modules that drive real background processes."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(pred: Callable[[], T], timeout: float = 90.0, step: float = 0.1) -> T:
    """Poll `pred` until it returns something truthy (returned); fail the test after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def make_split_dataset(root, per_split: tuple[int, int, int] = (5, 2, 2), size: int = 40):
    """A learnable 2-class split-layout dataset of PNGs (dark NORMAL, bright PNEUMONIA): train/val/test counts per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val", "test"), per_split):
        for k, cls in enumerate(("NORMAL", "PNEUMONIA")):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray((rng.integers(0, 120, (size, size)) + 100 * k).astype("uint8")).save(d / f"{cls}-{i}.png")
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
