"""Seconds a faithfulness score adds to a diagnosis: `python benchmarks/bench_faithfulness.py [--with-training]`.

For the shipped demo model (cnn5, 224 px) and a scratch resnet18 (224 px), on built-in test images, it times
round-robin in one process (median over images and repeats):
  explain        the prediction + GradCAM (what Diagnosis shows today),
  road_map_P     ROAD of the GradCAM map alone with percentile set P (no random baseline),
  measure_P      faithfulness.measure with set P: the map + 5 RandomCAM maps (what Diagnosis would add).
P: 1 = (80,), 2 = (80, 60), 4 = (80, 60, 40, 20) (measure_4 only with --measure-sets 1,2,4: slow).
--with-training runs the same while a 1-thread training job (`python -m cxrdemo train --data demo --backbone cnn5
--epochs 30 --img-size 128 --threads 1`, private run store) trains in the background; the job is stopped at the end.
--threads N sets torch's thread count for the timed work (Diagnosis uses 1 while a training job runs).
--sanity K instead prints the cascading-randomisation correlations (Spearman, SSIM per step, head first) of the
demo model for the first K built-in PNEUMONIA test images and each live method.
Wall seconds and the process's CPU seconds (`*_cpu`) are both printed: on a machine shared with other work the CPU
seconds stay close to what a quiet machine takes. Prints `name: value` lines; the CPU model (lscpu) and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrdemo.diagnosis import explain, faithfulness, result, sanity  # noqa: E402
from cxrdemo.diagnosis.predict import (  # noqa: E402
    LoadedModel,
    example_images,
    load_model,
    prepare,
    read_radiograph,
)
from cxrdemo.model import backbones  # noqa: E402
from cxrdemo.model.checkpoint import Decision, Preprocessing  # noqa: E402

SETS = {"1": (80,), "2": (80, 60), "4": (80, 60, 40, 20)}


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def _resnet18() -> LoadedModel:
    torch.manual_seed(0)
    net = backbones.build_backbone("resnet18", 2).eval()
    net.requires_grad_(False)
    return LoadedModel(net, ("NORMAL", "PNEUMONIA"), Preprocessing(224), Decision(), "bench-resnet18", Path("."))


def bench(model: LoadedModel, images: list[torch.Tensor], repeats: int, sets: list[str],
          measure_sets: list[str]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}

    def timed(name: str, fn) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        times.setdefault(name, []).append(time.perf_counter() - start)
        # CPU seconds of this process: on a shared machine, close to what a quiet one takes in wall time
        times.setdefault(f"{name}_cpu", []).append(time.process_time() - cpu)

    for _ in range(repeats):
        for x in images:
            res = result.assess_image(model, x)
            heat = explain.heatmap(model, res)
            timed("explain", lambda: explain.heatmap(model, result.assess_image(model, x)))
            for s in sets:
                timed(f"road_map_{s}", lambda: faithfulness.road_curves(model, x, heat.cam, heat.target, SETS[s]))
                if s in measure_sets:
                    timed(f"measure_{s}", lambda: faithfulness.measure(model, res, heat, percentiles=SETS[s]))
    return times


def sanity_table(k: int) -> None:
    model = load_model("demo")
    paths = [p for label, p in example_images(per_class=k).items() if label.startswith("PNEUMONIA")]
    for p in paths:
        x = prepare(model, read_radiograph(p).grey)
        for method in ("GradCAM", "GradCAM++", "LayerCAM", "EigenCAM"):
            start = time.perf_counter()
            check = sanity.cascading_randomisation(model, x, method, result.assess_image(model, x).predicted)
            steps = "  ".join(f"{s.randomised.split(' + ')[-1]} {s.spearman:+.2f}/{s.ssim:.2f}" for s in check.steps)
            print(f"sanity {Path(p).name} {method} ({time.perf_counter() - start:.1f} s): {steps}")


def start_training(store: str) -> subprocess.Popen:
    env = {**os.environ, "CXRDEMO_RUNS_DIR": store, "CXRDEMO_CACHE_DIR": os.path.join(store, "cache")}
    cmd = [sys.executable, "-m", "cxrdemo", "train", "--data", "demo", "--backbone", "cnn5", "--epochs", "30",
           "--img-size", "128", "--threads", "1", "--quiet"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--models", default="demo,resnet18")
    ap.add_argument("--sets", default="1,2,4", help="percentile sets timed for the map alone")
    ap.add_argument("--measure-sets", default="1,2", help="... and with the 5 random maps (4: ~6x the map alone)")
    ap.add_argument("--with-training", action="store_true")
    ap.add_argument("--sanity", type=int, default=0, metavar="K")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the timed work (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # Diagnosis uses 1 while a training job runs (views/heatmaps.py)
    print(f"cpu: {cpu_model()}  cores: {os.cpu_count()}  torch_threads: {torch.get_num_threads()}")
    print(f"loadavg_before: {os.getloadavg()[0]:.2f}")
    if args.sanity:
        sanity_table(args.sanity)
        return 0
    paths = [p for label, p in example_images(per_class=args.images).items()][: 2 * args.images]
    sets = args.sets.split(",")
    job, tmp = None, tempfile.TemporaryDirectory()
    if args.with_training:
        job = start_training(tmp.name)
        time.sleep(10)  # past the start-up: the job is decoding or training when timing starts
        print(f"training_job_running: {job.poll() is None}")
    try:
        for name in args.models.split(","):
            model = load_model("demo") if name == "demo" else _resnet18()
            images = [prepare(model, read_radiograph(p).grey) for p in paths]
            explain.heatmap(model, result.assess_image(model, images[0]))  # warm-up
            times = bench(model, images, args.repeats, sets, args.measure_sets.split(","))
            for key, values in times.items():
                print(f"{name}_{key}_s: {statistics.median(values):.3f}  (n={len(values)}, "
                      f"min {min(values):.3f}, max {max(values):.3f})")
            base = statistics.median(times["explain"])
            for s in [s for s in sets if f"measure_{s}" in times]:
                print(f"{name}_added_cpu_s_{s}: {statistics.median(times[f'measure_{s}_cpu']):.3f}")
                print(f"{name}_added_s_{s}: {statistics.median(times[f'measure_{s}']):.3f} "
                      f"(explain alone {base:.3f})")
    finally:
        if job is not None:
            print(f"training_job_still_running_at_end: {job.poll() is None}")
            job.terminate()
            job.wait(timeout=30)
        tmp.cleanup()
    print(f"loadavg_after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main())
