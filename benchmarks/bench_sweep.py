"""What a real sweep costs on this computer: `python benchmarks/bench_sweep.py --data DIR [--images 300] [--dry-run]`.

The sweep of issue 21: cnn5, resnet18, densenet121 x freeze head / 3 / none, 10 epochs on cxr-large at
224 px. Running it takes hours on 2 cores, so this measures ONE epoch of each of the 9 recipes on a stated
stratified subset (--images per split, default 300: 300 train and 300 val images) and extrapolates:
  - scratch weights (speed does not depend on their values; no download);
  - each recipe's timed trial (model/tuning.tune, what a user's first run or `python -m cxrdemo tune` does)
    is done first and its cost printed apart: the epochs are timed with the remembered choice;
  - seconds per image of that epoch = the epoch's `seconds` column of metrics.csv (training pass and
    validation) / (train images + val images / 3), the same model runs/durations.py extrapolates with
    (a validation image costs a forward pass, about a third of a training step); for `head` the trunk
    runs once (epoch 1 computes every split's features) and later epochs are nearly free, so its figure
    is epoch 1's seconds / (train + val images);
  - the one-off decode of the full set is extrapolated from the subset's decode images/s.
It writes the per-image figures, labelled with the CPU, threads, torch version, date and subset, to
<cache>/sweep_cost.json (runs/durations.MEASURED_FILE), where the Trainer's sweep form reads them for its
estimate before the click; `--out FILE` writes elsewhere instead. It prints the extrapolated table for
10 epochs of the full set, one after another, and what Ray with N nodes of this kind would change
(modelled: the 9 runs N at a time, never less than the longest run). The figures describe this computer
under its load at the time: the load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrdemo import data
from cxrdemo.config import TrainConfig
from cxrdemo.model import speed, tuning
from cxrdemo.runs import durations
from cxrdemo.runs import store as runs
from cxrdemo.runs.worker import execute_run

BACKBONES = ("cnn5", "resnet18", "densenet121")
FREEZES = ("head", "3", "none")
EPOCHS = 10
THREADS = 2


def one_epoch(root: Path, backbone: str, freeze: str, size: int, batch: int, images: int) -> dict:
    """One epoch of the recipe through the run worker; its metrics row and how it computed."""
    cfg = TrainConfig(data=str(root), backbone=backbone, freeze=freeze, init="scratch", epochs=1, img_size=size,
                      batch_size=batch, threads=THREADS, max_images=images, patience=0, step_size=0)
    d = runs.create_run(cfg)
    status = execute_run(d)
    if status["state"] != "completed":
        raise SystemExit(f"{backbone} {freeze}: {status.get('error')}")
    meta = runs.read_json(d / "config.json")
    return {"row": runs.read_metrics_rows(d)[0], "precision": meta.get("precision"),
            "memory_format": meta.get("memory_format"), "trial": (meta.get("speed_trial") or {}).get("source")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="split-layout dataset (issue 21's sweep: cxr-large)")
    ap.add_argument("--images", type=int, default=300, help="stratified subset: this many images per split")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=TrainConfig().batch_size)
    ap.add_argument("--epochs", type=int, default=EPOCHS, help="epochs of the sweep being estimated")
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--freezes", default=",".join(FREEZES))
    ap.add_argument("--out", help="write the measurement here instead of the Trainer's cache file")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the subset, time nothing")
    args = ap.parse_args(argv)
    root = Path(args.data).resolve()
    if not (root / "train").is_dir():
        print(f"{root} has no train/ folder: point --data at a split-layout dataset.", file=sys.stderr)
        return 2
    full = data.scan_dataset(root)
    n_full = {s: len(full.splits.get(s) or []) for s in ("train", "val")}
    sub = data.scan_dataset(root, max_per_split=args.images)
    n_sub = {s: len(sub.splits.get(s) or []) for s in ("train", "val")}
    cpu = speed.device_model(torch.device("cpu"))
    print(f"cpu: {cpu}\nthreads: {THREADS}\ntorch: {torch.__version__}\ndata: {root.name} "
          f"(full: {n_full['train']} train, {n_full['val']} val; subset: {n_sub['train']} train, {n_sub['val']} val)\n"
          f"img_size: {args.size}\nbatch: {args.batch}\nload_average_start: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    recipes = [(b, f) for b in args.backbones.split(",") for f in args.freezes.split(",")]
    if args.dry_run:
        print("plan: " + ", ".join(f"{b}:{f}" for b, f in recipes) + " - one epoch each on the subset")
        return 0
    os.environ["CXRDEMO_RUNS_DIR"] = str(Path(tempfile.mkdtemp(prefix="cxrdemo-sweep-")) / "runs")
    torch.set_num_threads(THREADS)
    items = [it for s in ("train", "val") for it in (sub.splits.get(s) or [])]
    t0 = time.perf_counter()
    for s in ("train", "val", "test"):  # the one-off decode (cached on disk: every later run reads it)
        if sub.splits.get(s):
            data.load_images(sub.splits[s], args.size, workers=THREADS)
    decode_ips = len(items) / max(time.perf_counter() - t0, 1e-9)
    print(f"decode_images_per_s: {decode_ips:.1f} (one-off; {THREADS} threads)", flush=True)

    per_image: dict[str, dict[str, float]] = {}
    lines = []
    for backbone, freeze in recipes:
        t0 = time.perf_counter()
        trial = "none needed (the trunk runs once)"
        if freeze != "head":
            c = tuning.tune(backbone, args.size, freeze, batch_size=args.batch, threads=THREADS)
            trial = f"{c.trial_s:.1f} s ({c.source})"
        print(f"trial_{backbone}_{freeze}: {trial} (wall {time.perf_counter() - t0:.1f} s)", flush=True)
        got = one_epoch(root, backbone, freeze, args.size, args.batch, args.images)
        seconds = float(got["row"]["seconds"])
        work = (n_sub["train"] + n_sub["val"] if freeze == "head"
                else n_sub["train"] + durations.VAL_SHARE * n_sub["val"])
        per_image.setdefault(backbone, {})[freeze] = seconds / work
        print(f"epoch_s_{backbone}_{freeze}: {seconds:.1f} ({got['precision']}, {got['memory_format']}, "
              f"trial {got['trial']})", flush=True)
        lines.append((backbone, freeze, seconds, got["precision"]))

    record = {"cpu": cpu, "threads": THREADS, "torch": torch.__version__, "img_size": args.size,
              "batch_size": args.batch, "date": datetime.date.today().isoformat(), "dataset": root.name,
              "subset": n_sub, "per_image_s": per_image, "decode_images_per_s": round(decode_ips, 2)}
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1), encoding="utf-8")
    else:
        durations.save_measured(record)
    print(f"written: {args.out or durations.MEASURED_FILE + ' in the cache folder'}")

    print(f"\n| backbone | freeze | arithmetic | subset epoch s | full epoch s (extrapolated) | {args.epochs} epochs |")
    print("|---|---|---|---:|---:|---:|")
    total, longest = 0.0, 0.0
    for backbone, freeze, seconds, precision in lines:
        cfg = TrainConfig(backbone=backbone, freeze=freeze, epochs=args.epochs, img_size=args.size)
        run_s = durations.training_seconds(cfg, n_full["train"], n_full["val"],
                                           durations.Speed(per_image, args.size, source="measured"))
        epoch_s = run_s if freeze == "head" else run_s / args.epochs
        total, longest = total + run_s, max(longest, run_s)
        print(f"| {backbone} | {freeze} | {precision} | {seconds:.1f} | {epoch_s:.0f} | {run_s / 60:.1f} min |")
    decode_s = (n_full["train"] + n_full["val"]) / decode_ips
    print(f"\nsweep_hours_one_after_another: {total / 3600:.2f} (+ one-off decode {decode_s / 60:.1f} min)")
    for nodes in (2, 3, 9):
        print(f"ray_{nodes}_nodes_hours (modelled: N at a time, at least the longest run): "
              f"{max(longest, total / nodes) / 3600:.2f}")
    print(f"cpu: {cpu}\nload_average_end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
