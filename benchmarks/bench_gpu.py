"""Training on one CUDA GPU, cxrdemo vs a tutorial loop: `python benchmarks/bench_gpu.py [--data D] [--images N]`.

Skips (exit 0, one line) where torch sees no CUDA GPU. For resnet18 and densenet121 at 224 px (scratch
weights, freeze none, batch 32, --epochs epochs; images/s = median of the epochs after the first):
  naive    torchvision ImageFolder + PIL transforms decoded every epoch by a DataLoader with
           --naive-workers processes and pin_memory, the model and each batch moved to the GPU;
  cxrdemo  `train.fit` through the run worker (CXRDEMO_DEVICE=cuda): decode once, uint8 batches pinned and
           copied non-blocking, augmentation (--augment) and normalisation on the GPU, precision and layout
           chosen by the timed trial; images/s from its metrics.csv.
While each side trains, a thread samples the GPU's utilisation (torch.cuda.utilization, i.e. NVML, else
`nvidia-smi`) every 100 ms: busy = the mean, as a fraction. Prints `name: value` lines and a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import machine

from cxrdemo import data
from cxrdemo.config import TrainConfig
from cxrdemo.runs import store as runs
from cxrdemo.runs.worker import execute_run

BACKBONES = ("resnet18", "densenet121")


def _utilisation() -> float | None:
    try:
        return float(torch.cuda.utilization())
    except (RuntimeError, ModuleNotFoundError, AttributeError):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", str(torch.cuda.current_device())], capture_output=True, text=True, timeout=5, check=False)
            return float(out.stdout.split()[0])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None


class Busy:
    """The GPU's mean utilisation while the block runs, as a fraction (nan when it cannot be read)."""

    def __enter__(self) -> "Busy":
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            u = _utilisation()
            if u is not None:
                self.samples.append(u / 100.0)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.fraction = statistics.mean(self.samples) if self.samples else float("nan")


def naive(root: Path, files: set[str], name: str, size: int, batch: int, epochs: int, workers: int) -> list[float]:
    """The tutorial loop on the GPU; images/s of each epoch's training pass."""
    import torchvision
    from torchvision import transforms as T

    dev = torch.device("cuda")
    tf = T.Compose([T.Grayscale(3), T.Resize((size, size)), T.ToTensor(),
                    T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])
    ds = torchvision.datasets.ImageFolder(str(root / "train"), transform=tf)
    ds = torch.utils.data.Subset(ds, [i for i, (p, _) in enumerate(ds.samples) if os.path.abspath(p) in files])
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=True)
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=2).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    speeds = []
    for _ in range(epochs):
        model.train()
        torch.cuda.synchronize()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            loss = loss_fn(model(x.to(dev, non_blocking=True)), y.to(dev, non_blocking=True))
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
        torch.cuda.synchronize()
        speeds.append(seen / (time.perf_counter() - t0))
    return speeds


def engine(root: Path, name: str, size: int, batch: int, epochs: int, max_images: int, augment: str):
    """cxrdemo's fit on the GPU: images/s per epoch and how it computed."""
    cfg = TrainConfig(data=str(root), backbone=name, freeze="none", init="scratch", epochs=epochs, img_size=size,
                      batch_size=batch, patience=0, step_size=0, max_images=max_images, augment=augment)
    d = runs.create_run(cfg)
    status = execute_run(d)
    if status["state"] != "completed":
        raise SystemExit(f"{name}: {status.get('error')}")
    meta = runs.read_json(d / "config.json")
    trial = meta.get("speed_trial") or {}
    how = f"{meta.get('precision')}, {meta.get('memory_format')}, trial {trial.get('source')}"
    return [float(r["images_per_s"]) for r in runs.read_metrics_rows(d)], how


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="split-layout dataset (the README's figures: cxr-large)")
    ap.add_argument("--images", type=int, default=0, help="stratified subset of this many images per split (0 = all)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--augment", default="none", choices=("none", "light", "acquisition"))
    ap.add_argument("--naive-workers", type=int, default=4, help="the tutorial's DataLoader worker processes")
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU")
        return 0
    root = Path(args.data).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="cxrdemo-bench-gpu-"))
    os.environ.update(CXRDEMO_RUNS_DIR=str(tmp / "runs"), CXRDEMO_CACHE_DIR=str(tmp / "cache"), CXRDEMO_DEVICE="cuda")
    for k, v in {**machine(), "gpu": torch.cuda.get_device_name()}.items():
        print(f"{k}: {v}")
    scan = data.scan_dataset(root, max_per_split=args.images)
    files = {os.path.abspath(p) for p, _ in scan.splits["train"]}
    print(f"images: {len(files)}\nimg_size: {args.size}\nbatch: {args.batch}\naugment: {args.augment}")
    t0 = time.perf_counter()
    for items in scan.splits.values():  # the engine's one-off decode, outside the timing
        if items:
            data.load_images(items, args.size, workers=len(os.sched_getaffinity(0)))
    print(f"decode_s: {time.perf_counter() - t0:.1f}", flush=True)
    table = []
    for name in args.backbones.split(","):
        with Busy() as nb:
            nv = naive(root, files, name, args.size, args.batch, args.epochs, args.naive_workers)
        with Busy() as cb:
            cx, how = engine(root, name, args.size, args.batch, args.epochs, args.images, args.augment)
        n_ips, c_ips = statistics.median(nv[1:]), statistics.median(cx[1:])
        for side, ips, busy in (("naive", n_ips, nb.fraction), ("cxrdemo", c_ips, cb.fraction)):
            print(f"{side}_images_per_s_{name}: {ips:.1f}\n{side}_gpu_busy_{name}: {busy:.2f}")
        print(f"cxrdemo_how_{name}: {how}\nratio_{name}: {c_ips / n_ips:.2f}", flush=True)
        table.append((name, n_ips, nb.fraction, c_ips, cb.fraction, how))
    print("\n| backbone | naive img/s | naive GPU busy | cxrdemo img/s | cxrdemo GPU busy | speed-up | engine |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, n, nbf, c, cbf, how in table:
        print(f"| {name} | {n:.0f} | {nbf:.0%} | {c:.0f} | {cbf:.0%} | {c / n:.2f}x | {how} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
