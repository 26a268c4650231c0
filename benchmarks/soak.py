"""Soak test: queued jobs, cancels and predictions at once; every run ends truthfully, no zombies, flat memory.

`python benchmarks/soak.py [--jobs 20] [--predictions 200] [--concurrency 1 2]`

For each concurrency level it submits JOBS background jobs (cnn8, 32 px, 1 epoch, one thread, on a tiny
generated dataset) through `jobs.submit`, exactly as the Trainer page does, and cancels every third one
from another thread (the first cancels land while the job waits in the queue, later ones may land
while it trains). Meanwhile this process, standing in for the app, runs PREDICTIONS predictions of a
shipped-style model on an uploaded PNG (read, quality check, preprocess, forward; every tenth with a
Grad-CAM heatmap), as the Diagnosis page does.

Checked at the end of each level (exit status 1 if any fails):
  * every run is in a final state: the cancelled ones `cancelled` (or `completed` when the job had
    already finished before the cancel arrived), all others `completed` with a model.pt;
  * no worker process is left, and no zombie child of this process;
  * this process's resident memory (RSS, sampled every 20 ms from /proc/self/statm) is flat:
    end - start under 64 MiB after the warm-up, reported with the peak.
Not part of the test suite (it takes a few minutes on 2 cores); the figures go into the README.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrdemo.config import TrainConfig  # noqa: E402
from cxrdemo.diagnosis import explain, predict, result
from cxrdemo.errors import RunError  # noqa: E402
from cxrdemo.model import checkpoint  # noqa: E402
from cxrdemo.runs import jobs
from cxrdemo.runs import store as runs  # noqa: E402
from cxrdemo.runs.worker import execute_run  # noqa: E402
from tests.helpers import make_split_dataset  # noqa: E402

FLAT_MIB = 64.0
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    """This process's resident set size in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class RssSampler(threading.Thread):
    """Peak RSS while running."""

    def __init__(self, every_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.every_s, self.peak, self._done = every_s, rss_mib(), threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_mib())
            time.sleep(self.every_s)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return max(self.peak, rss_mib())




def upload_bytes() -> bytes:
    """A radiograph-like PNG, as a user would upload."""
    y, x = np.mgrid[:256, :256] / 256
    img = 0.75 - 0.45 * (np.exp(-((x - 0.3) ** 2 / 0.02 + (y - 0.5) ** 2 / 0.08))
                         + np.exp(-((x - 0.7) ** 2 / 0.02 + (y - 0.5) ** 2 / 0.08)))
    img += 0.04 * np.random.default_rng(0).standard_normal(img.shape)
    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def predict_once(model: predict.LoadedModel, raw: bytes, cam: bool) -> None:
    """What the Diagnosis page does for one upload."""
    res = result.assess(model, predict.read_radiograph(raw, "upload.png"))
    if cam:
        explain.heatmap(model, res, "GradCAM")


def zombies_and_workers(store: Path) -> tuple[list[int], list[int]]:
    """Zombie children of this process, and live processes whose command line names this run store."""
    zombies, workers = [], []
    me, tag = os.getpid(), str(store).encode()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == me and stat[0] == "Z":
            zombies.append(int(p.name))
        elif tag in cmd and stat[0] != "Z":
            workers.append(int(p.name))
    return zombies, workers


def soak(level: int, n_jobs: int, n_pred: int, data: Path, model: predict.LoadedModel, raw: bytes,
         store: Path) -> dict:
    """One concurrency level; returns its figures and the list of failed checks."""
    cfg = TrainConfig(data=str(data), backbone="cnn8", img_size=32, epochs=1, batch_size=8, patience=0, threads=1)
    predict_once(model, raw, cam=True)  # warm-up: lazy imports and allocator pools, before the baseline
    rss_start = rss_mib()
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    ids: list[str] = []
    cancel_results: dict[str, str] = {}
    submitted = threading.Event()

    def submit_and_cancel() -> None:
        for k in range(n_jobs):
            ids.append(jobs.submit(cfg.replace(seed=k), store, name=f"soak{level}", max_jobs=level))
            if k % 3 == 2:  # cancel every third, the earliest while they still wait in the queue
                try:
                    cancel_results[ids[k]] = jobs.cancel(ids[k], store, grace_s=20)["state"]
                except RunError as exc:
                    cancel_results[ids[k]] = str(exc)
        submitted.set()

    canceller = threading.Thread(target=submit_and_cancel)
    canceller.start()
    latencies = []
    for i in range(n_pred):
        s = time.perf_counter()
        predict_once(model, raw, cam=i % 10 == 0)
        latencies.append(time.perf_counter() - s)
        time.sleep(0.1)  # a user clicking, not a benchmark loop
    canceller.join()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        states = {i: runs.read_status(store / i)["state"] for i in ids}
        if all(s in runs.FINAL for s in states.values()):
            break
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    deadline = time.monotonic() + 30
    while jobs.poll_children() and time.monotonic() < deadline:
        time.sleep(0.2)
    peak = sampler.stop()
    rss_end = rss_mib()
    zombies, workers = zombies_and_workers(store)

    failures = []
    cancelled = set(ids[2::3])
    counts: dict[str, int] = {}
    for run_id, state in states.items():
        counts[state] = counts.get(state, 0) + 1
        want = ("cancelled", "completed") if run_id in cancelled else ("completed",)
        if state not in want:
            failures.append(f"{run_id} is {state}, expected {' or '.join(want)}")
        if state == "completed" and not checkpoint.has_model(store / run_id):
            failures.append(f"{run_id} completed without {checkpoint.MODEL_FILE}")
    if zombies:
        failures.append(f"zombie children: {zombies}")
    if workers:
        failures.append(f"worker processes still alive: {workers}")
    if rss_end - rss_start > FLAT_MIB:
        failures.append(f"RSS grew {rss_end - rss_start:.0f} MiB (limit {FLAT_MIB:.0f})")
    return {"concurrency": level, "jobs": len(ids), "states": counts, "wall_s": round(wall, 1),
            "cancel_answers": sorted(set(cancel_results.values())),
            "predictions": n_pred, "pred_ms_median": round(1000 * float(np.median(latencies)), 1),
            "pred_ms_p95": round(1000 * float(np.percentile(latencies, 95)), 1),
            "rss_start_mib": round(rss_start, 1), "rss_end_mib": round(rss_end, 1), "rss_peak_mib": round(peak, 1),
            "zombies": len(zombies), "workers_left": len(workers), "failures": failures}


def main() -> int:
    """Run the soak at each concurrency level; print one line of figures per level and the verdict."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--predictions", type=int, default=200)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxrdemo-soak-") as tmp:
        tmp_path = Path(tmp)
        os.environ["CXRDEMO_RUNS_DIR"] = str(tmp_path / "runs")
        os.environ["CXRDEMO_CACHE_DIR"] = str(tmp_path / "cache")
        os.environ["CXRDEMO_THREADS"] = "1"
        data = make_split_dataset(tmp_path / "data", (5, 2, 2))
        base = runs.create_run(TrainConfig(data=str(data), backbone="cnn8", img_size=32, epochs=1, batch_size=8,
                                           threads=1), tmp_path / "model")
        if execute_run(base)["state"] != "completed":
            print("could not train the model used for predictions", file=sys.stderr)
            return 1
        model = predict.load_model(str(base), allow_path=True)
        raw = upload_bytes()
        ok = True
        for level in args.concurrency:
            r = soak(level, args.jobs, args.predictions, data, model, raw, tmp_path / f"runs-c{level}")
            print({k: v for k, v in r.items() if k != "failures"}, flush=True)
            for f in r["failures"]:
                print(f"FAIL: {f}", flush=True)
            ok = ok and not r["failures"]
        print("soak: all checks passed" if ok else "soak: FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
