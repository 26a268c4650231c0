"""Fine-tuning speed and memory on a CPU, cxrdemo vs a tutorial loop: `python benchmarks/bench_train.py [--quick]`.

For each backbone (resnet18, densenet121; scratch weights: speed does not depend on their values) and
freeze level (head, 3 = stem + stage1 + stage2 frozen, none) it trains, interleaved in ONE process so
that both sides see the same background load:
  naive    the usual tutorial: torchvision ImageFolder + PIL transforms (Grayscale(3), Resize((S, S)),
           ToTensor, Normalize) decoding every image every epoch through a DataLoader (num_workers=0:
           on 2 cores, workers would compete with torch's 2 intra-op threads), the full torchvision model
           in train() mode, `requires_grad=False` on exactly the parameters cxrdemo freezes, Adam;
  cxrdemo  `train.fit` (through the run worker) on a run folder in a temporary run store, read back from its metrics.csv.
The engine runs as a user gets it: precision `auto` (bfloat16 autocast for the forward pass on CPUs with
AMX, float32 elsewhere; `--precision fp32` measures the engine without it) and channels-last; its path
line says which it used. Both use torch.set_num_threads(2) (the engine through TrainConfig.threads=2), the same image files,
the same image size and batch size, and --epochs epochs (default 3); epoch 1 is the warm-up, images/s is
the median of the other epochs' training pass only (the engine's column images_per_s times the training pass
only). `--quick` is 96 images at 64 px over 6 epochs (median of 5): with 3 epochs of 2 batches, as it used
to be, each ratio rested on 4 timed steps of a few tens of milliseconds.

Before training it times the engine's one-off decode of the train split (data.cache.decode_all) with one
thread and with THREADS threads, after one untimed pass that brings the files into the page cache:
decode images/s serial vs parallel. It prints the load average at the
start and the end: on a shared machine every figure is only as good as that.

Memory: a sampler thread reads this process's resident set size from /proc/self/statm every 2 ms; a
figure is the peak during one side's whole run (model building, data loading, all epochs, and for the
engine also validation, checkpoints and the test) minus the RSS at its start, after gc.collect() and
malloc_trim(0) so memory freed by the previous measurement does not hide new allocations. The
engine's in-memory image memo is cleared first, so its figure includes loading the uint8 image
cache from disk (the one-off decoding happens in a warm-up before any measurement).

Prints `name: value` lines, a markdown table, and last the ratios cxrdemo/naive: ratio_<backbone>_<freeze>
(images/s, higher is better) and mem_ratio_<backbone>_<freeze> (peak memory, lower is better).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrdemo import data  # noqa: E402
from cxrdemo.config import TrainConfig  # noqa: E402
from cxrdemo.model import backbones  # noqa: E402
from cxrdemo.runs import store as runs
from cxrdemo.runs.worker import execute_run

BACKBONES = ("resnet18", "densenet121")
FREEZES = ("head", "3", "none")
THREADS = 2
EPOCHS = 3


# ---------------------------------------------------------------- memory

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed arenas back, so the next baseline is honest
    except OSError:
        pass


class PeakRSS:
    """Peak resident memory above the level at entry, sampled by a thread every 2 ms."""

    def __enter__(self) -> "PeakRSS":
        _trim()
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.mb = (self.peak - self.base) / 2**20


# ---------------------------------------------------------------- the two sides

def naive(root: Path, files: set[str], name: str, n_frozen: int, size: int, batch: int,
          epochs: int = EPOCHS) -> list[float]:
    """The tutorial loop; returns images/s of each epoch's training pass."""
    import torchvision
    from torchvision import transforms as T

    tf = T.Compose([T.Grayscale(3), T.Resize((size, size)), T.ToTensor(),
                    T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])
    ds = torchvision.datasets.ImageFolder(str(root / "train"), transform=tf)
    ds = torch.utils.data.Subset(ds, [i for i, (p, _) in enumerate(ds.samples) if os.path.abspath(p) in files])
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0)
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=2)
    # The same parameters as cxrdemo's first n groups: its trunk stages are this model's own modules.
    stages, _ = backbones.get_spec(name).make_trunk(model)
    frozen = {id(p) for s in stages[:n_frozen] for p in s.parameters()}
    for p in model.parameters():
        p.requires_grad = id(p) not in frozen
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    speeds = []
    for _ in range(epochs):
        model.train()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
        speeds.append(seen / (time.perf_counter() - t0))
    return speeds


def engine(data_root: Path, name: str, freeze: str, size: int, batch: int, max_images: int,
           precision: str = "auto", epochs: int = EPOCHS) -> tuple[list[float], list[str]]:
    """cxrdemo's train.fit, run by the worker that keeps the run's files; images/s and path of each epoch, from metrics.csv."""
    cfg = TrainConfig(data=str(data_root), backbone=name, freeze=freeze, init="scratch", epochs=epochs,
                      img_size=size, batch_size=batch, threads=THREADS, patience=0, step_size=0,
                      max_images=max_images, augment="none", precision=precision)
    d = runs.create_run(cfg)
    status = execute_run(d)
    if status["state"] != "completed":
        raise SystemExit(f"{name} {freeze}: {status.get('error')}")
    rows = runs.read_metrics_rows(d)
    meta = runs.read_json(d / "config.json")
    trial = meta.get("speed_trial") or {}
    how = f"{meta.get('precision')}, {meta.get('memory_format')}, trial: {trial.get('source')} {trial.get('step_s', '')}"
    return [float(r["images_per_s"]) for r in rows], [f"{r['path']} ({how})" for r in rows]


# ---------------------------------------------------------------- main

def machine() -> dict[str, str]:
    """nproc, CPU model and library versions for the README table."""
    cpu = platform.processor() or "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torchvision
    return {"nproc": str(len(os.sched_getaffinity(0))), "cpu": cpu, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "threads": str(THREADS)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-dev"), help="split-layout dataset (<data>/train/<CLASS>)")
    ap.add_argument("--quick", action="store_true", help="96 images at 64 px, 6 epochs: a short run in a few minutes")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per side (the first is the warm-up)")
    ap.add_argument("--images", type=int, default=0, help="stratified subset of this many images per split (0 = all)")
    ap.add_argument("--size", type=int, default=224, help="image size in pixels")
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--freezes", default=",".join(FREEZES))
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                    help="the engine's TrainConfig.precision (auto = bf16 autocast on AMX CPUs; the naive loop is fp32)")
    args = ap.parse_args(argv)
    root = Path(args.data).resolve()
    if not (root / "train").is_dir():
        print(f"{root} has no train/ folder: point --data at a split-layout dataset.", file=sys.stderr)
        return 2
    size, batch, max_images = (64, 32, 96) if args.quick else (args.size, 32, args.images)
    epochs = max(2, 6 if args.quick else args.epochs)
    tmp = Path(tempfile.mkdtemp(prefix="cxrdemo-bench-"))
    os.environ["CXRDEMO_RUNS_DIR"], os.environ["CXRDEMO_CACHE_DIR"] = str(tmp / "runs"), str(tmp / "cache")
    torch.set_num_threads(THREADS)
    for k, v in machine().items():
        print(f"{k}: {v}")
    scan = data.scan_dataset(root, max_per_split=max_images)
    files = {os.path.abspath(p) for p, _ in scan.splits["train"]}
    print(f"images: {len(files)}\nimg_size: {size}\nbatch: {batch}\nepochs: {epochs}\n"
          f"load_average_start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    data.cache.decode_all(sorted(files), size, THREADS)  # warm the page cache: both timings then read from memory
    for workers in (1, THREADS):  # the one-off decode, serial vs parallel (no disk cache: nothing written)
        t0 = time.perf_counter()
        decoded = data.cache.decode_all(sorted(files), size, workers)
        print(f"decode_images_per_s_{'serial' if workers == 1 else f'{workers}_threads'}: "
              f"{len(decoded[1]) / (time.perf_counter() - t0):.1f}", flush=True)
        del decoded
    for split_items in scan.splits.values():  # the engine's one-off decode, outside every measurement
        if split_items:
            data.load_images(split_items, size)

    results, table = {}, []
    for bi, name in enumerate(args.backbones.split(",")):
        for fi, freeze in enumerate(args.freezes.split(",")):
            key = f"{name}_{freeze}"
            n_frozen = backbones.frozen_groups(freeze, name)
            out = {}
            # Alternate who goes first so that neither side always follows the other's memory state.
            for side in (("naive", "cxrdemo") if (bi + fi) % 2 == 0 else ("cxrdemo", "naive")):
                data.cache._MEMO.clear()
                t0 = time.perf_counter()
                with PeakRSS() as mem:
                    if side == "naive":
                        speeds, path = naive(root, files, name, n_frozen, size, batch, epochs), "decode-every-epoch"
                    else:
                        speeds, paths = engine(root, name, freeze, size, batch, max_images, args.precision, epochs)
                        path = paths[-1]
                ips = statistics.median(speeds[1:])
                out[side] = (ips, mem.mb)
                print(f"{side}_images_per_s_{key}: {ips:.2f}")
                print(f"{side}_epochs_images_per_s_{key}: {' '.join(f'{s:.2f}' for s in speeds)}")
                print(f"{side}_peak_mem_mb_{key}: {mem.mb:.1f}")
                print(f"{side}_path_{key}: {path}")
                print(f"{side}_wall_s_{key}: {time.perf_counter() - t0:.1f}", flush=True)
            results[key] = (out["cxrdemo"][0] / out["naive"][0], out["cxrdemo"][1] / max(out["naive"][1], 1e-9))
            table.append((name, freeze, out["naive"], out["cxrdemo"], results[key]))

    print("\n| backbone | freeze | naive img/s | cxrdemo img/s | speed-up | naive peak MB | cxrdemo peak MB | mem ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, freeze, nv, cx, (r, m) in table:
        print(f"| {name} | {freeze} | {nv[0]:.1f} | {cx[0]:.1f} | {r:.2f}x | {nv[1]:.0f} | {cx[1]:.0f} | {m:.2f} |")
    print()
    for key, (r, _) in results.items():
        print(f"ratio_{key}: {r:.2f}")
    for key, (_, m) in results.items():
        print(f"mem_ratio_{key}: {m:.2f}")
    print(f"load_average_end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
