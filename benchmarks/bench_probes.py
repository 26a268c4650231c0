"""Probe timelapse overhead: seconds per epoch spent writing probes/epoch-NNN.npz vs the epoch itself.

python benchmarks/bench_probes.py                       # cxr-dev, 224 px, resnet18, freeze none / 3 / head
python benchmarks/bench_probes.py --quick               # a short check: 24 images per split, 2 epochs
python benchmarks/bench_probes.py --data DIR --freezes none,head --epochs 3 --size 224
Not run by pytest. Writes only to a temporary folder (its own run store; its image cache unless
CXRDEMO_CACHE_DIR is set).
Each epoch's `seconds` (training + validation, as metrics.csv has it) and `probe_s` (the probes: one forward
and a Grad-CAM backward of 3 validation images per class, and the compressed write) come from the same
progress rows. All freeze levels run in one process, one after the other, under the same load; the summary
gives the first epoch apart (it pays the one-off costs: the head-only path's trunk features of every image)
and the mean of the later ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_model() -> str:
    """lscpu's model name (what the figures were measured on)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "unknown")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="split-layout dataset (the README's figures: cxr-dev)")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--freezes", default="none,3,head")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--probes", type=int, default=3)
    ap.add_argument("--max-images", type=int, default=0, help="cap images per split (0 = all)")
    ap.add_argument("--quick", action="store_true", help="a short check: 24 images per split, 2 epochs")
    ap.add_argument("--isolated", action="store_true",
                    help="only time the probe step itself (wall and CPU seconds, 5 repeats): no training")
    args = ap.parse_args()
    if args.quick:
        args.max_images, args.epochs = args.max_images or 24, min(args.epochs, 2)
    if args.isolated:
        return isolated(args)
    tmp = tempfile.mkdtemp(prefix="bench_probes_")
    os.environ["CXRDEMO_RUNS_DIR"] = str(Path(tmp) / "runs")
    os.environ.setdefault("CXRDEMO_CACHE_DIR", str(Path(tmp) / "cache"))  # a set one is reused: no second decode
    from cxrdemo.config import TrainConfig
    from cxrdemo.model import train

    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}; {args.backbone}, "
          f"{args.size} px, {Path(args.data).name}" + (f", {args.max_images} images per split" if args.max_images
                                                       else ""))
    print("| freeze | epoch | path | epoch s | probe s | probe / epoch |")
    print("|---|---|---|---|---|---|")
    results: dict[str, list[dict]] = {}
    for freeze in args.freezes.split(","):
        config = TrainConfig(data=args.data, backbone=args.backbone, init="scratch", freeze=freeze,
                             epochs=args.epochs, img_size=args.size, patience=0, step_size=0, probes=args.probes,
                             max_images=args.max_images)
        rows = results[freeze] = []
        train.fit(config, Path(tempfile.mkdtemp(dir=tmp)), lambda p, rows=rows: rows.append(p.row) if p.row else None)
        for r in rows:
            print(f"| {freeze} | {r['epoch']} | {r['path']} | {r['seconds']:.2f} | {r['probe_s']:.3f} | "
                  f"{100 * r['probe_s'] / r['seconds']:.1f}% |", flush=True)
    print(f"\nsummary (load average now {os.getloadavg()[0]:.1f})")
    print("| freeze | epoch 1: epoch s | epoch 1: probe s | later: epoch s | later: probe s | later: probe / epoch |")
    print("|---|---|---|---|---|---|")
    for freeze, rows in results.items():
        first, later = rows[0], rows[1:]
        mean = (lambda k: sum(r[k] for r in later) / len(later)) if later else None
        tail = (f"{mean('seconds'):.2f} | {mean('probe_s'):.3f} | {100 * mean('probe_s') / mean('seconds'):.1f}%"
                if mean else "- | - | -")
        print(f"| {freeze} | {first['seconds']:.2f} | {first['probe_s']:.3f} | {tail} |")
    return 0


def isolated(args) -> int:
    """The probe step alone on a fresh network: min wall seconds and CPU seconds per call (load-independent)."""
    import time

    import torch

    from cxrdemo.model import backbones, probes

    torch.set_num_threads(2)
    net = backbones.build_backbone(args.backbone, 2)
    x = torch.randn(2 * args.probes, 3, args.size, args.size)
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    walls, cpus = [], []
    for _ in range(5):
        w, c = time.perf_counter(), time.process_time()
        probes.heatmaps(net, x)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    print(f"{args.backbone} {2 * args.probes} probes at {args.size} px: wall min {min(walls):.3f} s, "
          f"CPU {min(cpus):.3f} s (over {torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
