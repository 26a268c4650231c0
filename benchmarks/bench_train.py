"""Fine-tuning speed and memory on a CPU, cxrdemo vs a tutorial loop: `python benchmarks/bench_train.py [--quick]`.

Rows (default): resnet18 and cnn5 at freeze 3 and none, and densenet121 head-only, each at 128 and 224 px.
Sides, run in ONE process and interleaved: for each row, --repeats rounds, each round one run of every side,
the side that goes first rotating from round to round, so that all see the same background load:
  naive         the usual tutorial: torchvision ImageFolder + PIL transforms (Grayscale(3), Resize((S, S)),
                ToTensor, Normalize) decoding every image every epoch through a DataLoader (num_workers=0:
                on 2 cores, workers would compete with torch's 2 intra-op threads), the full model in
                train() mode (torchvision's, or cxrdemo's Net for cnn5 with nothing frozen by the engine's
                means), `requires_grad=False` on exactly the parameters cxrdemo freezes, Adam;
  cxrdemo       `train.fit` (through the run worker) with precision auto, as a user gets it;
  cxrdemo_fp32  the same with --precision fp32: "never slower than the tutorial without bf16".
The engine's timed trial (model/tuning.tune, the `python -m cxrdemo tune` of a user) is done BEFORE any
timing, for both precisions, and its own cost is printed separately (trial_s_<row>): the timed runs start
with the remembered answer from epoch 1. Both sides use torch.set_num_threads(2), the same image files,
size and batch. images/s of one run = median of its epochs 2..E, training pass only (the engine's column
images_per_s times the training pass only); a row's ratio = the median over rounds of the per-round ratio
(engine / naive of the same round), with its min-max. `--quick`: 64 px, 128 images (4 batches), 3 epochs,
5 rounds, resnet18 and cnn5 at freeze none (the old quick run rested on 4 steps of a few tens of
milliseconds each, timed in two separate blocks: a load change between the blocks moved the ratio 3x).

Before training it times the engine's one-off decode of the train split (data.cache.decode_all) with one
thread and with THREADS threads, after one untimed pass that brings the files into the page cache:
decode images/s serial vs parallel. It prints the CPU model and the load average at the start and the
end: on a shared machine every figure is only as good as that.

Memory: a sampler thread reads this process's resident set size from /proc/self/statm every 2 ms; a
figure is the peak during one side's whole run (for the engine also validation, checkpoints and the test)
minus the RSS at its start, after gc.collect() and malloc_trim(0); the median over rounds is printed.

Prints `name: value` lines, a markdown table, and last ratio_<size>_<backbone>_<freeze> (cxrdemo/naive
images/s), ratio_fp32_<...> and mem_ratio_<...> (peak memory, lower is better).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrdemo import data
from cxrdemo.config import TrainConfig
from cxrdemo.model import backbones, speed, tuning
from cxrdemo.runs import store as runs
from cxrdemo.runs.worker import execute_run

ROWS = ("resnet18:3", "resnet18:none", "cnn5:3", "cnn5:none", "densenet121:head")
SIZES = (128, 224)
REPEATS = 3
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

    def __enter__(self) -> PeakRSS:
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
    if name in torchvision.models.list_models():
        model = torchvision.models.get_model(name, weights=None, num_classes=2)
        # The same parameters as cxrdemo's first n groups: its trunk stages are this model's own modules.
        stages, _ = backbones.get_spec(name).make_trunk(model)
    else:  # cxrdemo's own small CNNs: the same Net, but trained the tutorial's way (full graph, BN all in train)
        model = backbones.build_backbone(name, 2, init="scratch")
        stages = list(model.trunk)
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
    how = f"{meta.get('precision')}, {meta.get('memory_format')}, trial: {trial.get('source')}"
    return [float(r["images_per_s"]) for r in rows], [f"{r['path']} ({how})" for r in rows]


# ---------------------------------------------------------------- main

def machine() -> dict[str, str]:
    """nproc, CPU model and library versions for the README table."""
    import torchvision

    cpu = speed.device_model(torch.device("cpu"))
    return {"nproc": str(len(os.sched_getaffinity(0))), "cpu": cpu, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "threads": str(THREADS)}


def _trial(name: str, freeze: str, size: int, batch: int, precision: str) -> str:
    """The engine's timed trial for one row, done (and remembered) before anything is timed; its cost, in words."""
    if freeze == "head":
        return "none needed (the trunk runs once)"
    c = tuning.tune(name, size, freeze, batch_size=batch, precision=precision, threads=THREADS, max_s=60.0)
    chosen = ("bf16" if c.bf16 else "fp32") + ("-channels-last" if c.channels_last else "-contiguous")
    return f"{c.trial_s:.1f} s -> {chosen} ({c.ratio or 0:.2f}x {c.reference}, {c.source})"


def _side(side: str, root: Path, files: set[str], name: str, freeze: str, size: int, batch: int, max_images: int,
          epochs: int) -> tuple[float, float, str]:
    """One run of one side: (median images/s of epochs 2..E, peak MB, how it computed)."""
    data.cache._MEMO.clear()
    with PeakRSS() as mem:
        if side == "naive":
            speeds, how = naive(root, files, name, backbones.frozen_groups(freeze, name), size, batch, epochs), "naive"
        else:
            speeds, paths = engine(root, name, freeze, size, batch, max_images,
                                   "fp32" if side == "cxrdemo_fp32" else "auto", epochs)
            how = paths[-1]
    return statistics.median(speeds[1:]), mem.mb, how


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="split-layout dataset (<data>/train/<CLASS>; the README's figures: "
                    "cxr-dev)")
    ap.add_argument("--quick", action="store_true",
                    help="64 px, 128 images, 3 epochs, 5 interleaved rounds, resnet18 and cnn5 at freeze none")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per run (the first is the warm-up)")
    ap.add_argument("--repeats", type=int, default=REPEATS, help="interleaved rounds per row (the median is reported)")
    ap.add_argument("--images", type=int, default=0, help="stratified subset of this many images per split (0 = all)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="image sizes in pixels, comma-separated")
    ap.add_argument("--rows", default=",".join(ROWS), help="backbone:freeze pairs, comma-separated")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--no-fp32", action="store_true", help="leave out the forced-float32 engine side")
    args = ap.parse_args(argv)
    root = Path(args.data).resolve()
    if not (root / "train").is_dir():
        print(f"{root} has no train/ folder: point --data at a split-layout dataset.", file=sys.stderr)
        return 2
    if args.quick:
        args.sizes, args.images, args.epochs, args.repeats = "64", 128, 3, 5
        args.rows = "resnet18:none,cnn5:none" if args.rows == ",".join(ROWS) else args.rows
    epochs, batch = max(2, args.epochs), args.batch
    rows = [tuple(r.split(":")) for r in args.rows.split(",")]
    sizes = [int(x) for x in args.sizes.split(",")]
    sides = ("naive", "cxrdemo") + (() if args.no_fp32 else ("cxrdemo_fp32",))
    tmp = Path(tempfile.mkdtemp(prefix="cxrdemo-bench-"))
    os.environ["CXRDEMO_RUNS_DIR"], os.environ["CXRDEMO_CACHE_DIR"] = str(tmp / "runs"), str(tmp / "cache")
    torch.set_num_threads(THREADS)
    for k, v in machine().items():
        print(f"{k}: {v}")
    scan = data.scan_dataset(root, max_per_split=args.images)
    files = {os.path.abspath(p) for p, _ in scan.splits["train"]}
    print(f"images: {len(files)}\nsizes: {sizes}\nbatch: {batch}\nepochs: {epochs}\nrepeats: {args.repeats}\n"
          f"load_average_start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    data.cache.decode_all(sorted(files), sizes[0], THREADS)  # warm the page cache: both timings read from memory
    for workers in (1, THREADS):  # the one-off decode, serial vs parallel (no disk cache: nothing written)
        t0 = time.perf_counter()
        decoded = data.cache.decode_all(sorted(files), sizes[0], workers)
        print(f"decode_images_per_s_{'serial' if workers == 1 else f'{workers}_threads'}: "
              f"{len(decoded[1]) / (time.perf_counter() - t0):.1f}", flush=True)
        del decoded

    table = []
    for size in sizes:
        for split_items in scan.splits.values():  # the engine's one-off decode, outside every measurement
            if split_items:
                data.load_images(split_items, size)
        for name, freeze in rows:
            key = f"{size}_{name}_{freeze}"
            t0 = time.perf_counter()
            trial = {p: _trial(name, freeze, size, batch, p) for p in ("auto", "fp32")}
            print(f"trial_{key}: auto {trial['auto']}; fp32 {trial['fp32']} (wall {time.perf_counter() - t0:.1f} s)",
                  flush=True)
            got: dict[str, list] = {s: [] for s in sides}
            for r in range(args.repeats):
                order = sides[r % len(sides):] + sides[:r % len(sides)]  # who goes first rotates
                for side in order:
                    got[side].append(_side(side, root, files, name, freeze, size, batch, args.images, epochs))
                    ips, mb, how = got[side][-1]
                    print(f"{side}_round{r + 1}_{key}: {ips:.2f} img/s, {mb:.0f} MB, {how}", flush=True)
            ratios = {s: [g[0] / n[0] for g, n in zip(got[s], got["naive"])] for s in sides[1:]}
            med = {s: statistics.median(g[0] for g in got[s]) for s in sides}
            mem = {s: statistics.median(g[1] for g in got[s]) for s in sides}
            table.append((size, name, freeze, med, mem, ratios, got["cxrdemo"][-1][2]))

    print("\n| size | backbone | freeze | naive img/s | cxrdemo img/s | speed-up (min-max) | fp32-forced img/s | "
          "fp32 speed-up | naive MB | cxrdemo MB | cxrdemo computed |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for size, name, freeze, med, mem, ratios, how in table:
        r = ratios["cxrdemo"]
        f = ratios.get("cxrdemo_fp32")
        fp32 = f"{med['cxrdemo_fp32']:.1f} | {statistics.median(f):.2f}x" if f else "- | -"
        print(f"| {size} | {name} | {freeze} | {med['naive']:.1f} | {med['cxrdemo']:.1f} | "
              f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f}) | {fp32} | {mem['naive']:.0f} | "
              f"{mem['cxrdemo']:.0f} | {how} |")
    print()
    for size, name, freeze, med, mem, ratios, _ in table:
        key = f"{size}_{name}_{freeze}"
        print(f"ratio_{key}: {statistics.median(ratios['cxrdemo']):.2f}")
        if "cxrdemo_fp32" in ratios:
            print(f"ratio_fp32_{key}: {statistics.median(ratios['cxrdemo_fp32']):.2f}")
        print(f"mem_ratio_{key}: {mem['cxrdemo'] / max(mem['naive'], 1e-9):.2f}")
    print(f"cpu: {machine()['cpu']}")
    print(f"load_average_end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
