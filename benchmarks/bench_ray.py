"""Overhead of the Ray backend against the local one: wall time from submit to 'completed' for a tiny job.

`python benchmarks/bench_ray.py [--repeats 5] [--address ADDRESS]`

Each job is cnn8, 32 px, 1 epoch, one thread, on a tiny generated dataset (16 train images), submitted
through `jobs.submit` as the Trainer page does; the clock stops when status.json reads 'completed'
(polled every 20 ms). Both backends are measured warm and interleaved: the local backend after one
warm-up job (the OS page cache holds torch), the Ray backend on a session that already ran one job
(Ray's worker process, with torch imported, is reused; the launcher actor exists). Without --address
a local Ray head is started in this process (2 CPUs, loopback). Prints `name: value` lines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrdemo.config import TrainConfig  # noqa: E402
from cxrdemo.runs import jobs
from cxrdemo.runs import store as runs  # noqa: E402
from tests.helpers import make_split_dataset  # noqa: E402


def one_job(config: TrainConfig, root: Path, backend: str, timeout_s: float = 300.0) -> float:
    """Seconds from submit to 'completed'."""
    t0 = time.perf_counter()
    run_id = jobs.submit(config, root, backend=backend)
    while True:
        state = runs.read_status(root / run_id)["state"]
        if state in runs.FINAL:
            break
        if time.perf_counter() - t0 > timeout_s:
            raise SystemExit(f"{backend} job {run_id} still {state} after {timeout_s:g} s")
        time.sleep(0.02)
    if state != "completed":
        raise SystemExit(f"{backend} job {run_id} ended {state}: {runs.read_status(root / run_id).get('error')}")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--address", default=None, help="an existing cluster (default: a local head in this process)")
    args = ap.parse_args()
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    os.environ.update(CXRDEMO_RUNS_DIR=str(tmp / "runs"), CXRDEMO_CACHE_DIR=str(tmp / "cache"), CXRDEMO_OFFLINE="1",
                      CXRDEMO_JOB_NICE="0", CXRDEMO_THREADS="1", CXRDEMO_RAY_NUM_CPUS="1")
    root = tmp / "runs"
    config = TrainConfig(data=str(make_split_dataset(tmp / "data", (8, 2, 2))), backbone="cnn8", img_size=32, epochs=1, batch_size=8,
                         patience=0, threads=1)
    t0 = time.perf_counter()
    if args.address:
        ray.init(address=args.address, namespace="cxrdemo", log_to_driver=False, logging_level="ERROR")
    else:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", namespace="cxrdemo",
                 log_to_driver=False, logging_level="ERROR")
    print(f"ray_init_s: {time.perf_counter() - t0:.2f}")
    print(f"ray_first_job_s: {one_job(config, root, 'ray'):.2f}")  # launcher actor + a worker importing torch
    print(f"local_first_job_s: {one_job(config, root, 'local'):.2f}")
    times: dict[str, list[float]] = {"local": [], "ray": []}
    for _ in range(args.repeats):
        for backend in ("local", "ray"):  # interleaved: machine load affects both alike
            times[backend].append(one_job(config, root, backend))
    for backend, ts in times.items():
        print(f"{backend}_submit_to_completed_median_s: {statistics.median(ts):.2f}")
        print(f"{backend}_submit_to_completed_all_s: {' '.join(f'{t:.2f}' for t in ts)}")
    print(f"ray_overhead_median_s: {statistics.median(times['ray']) - statistics.median(times['local']):.2f}")
    print(f"repeats: {args.repeats}")
    print(f"cores: {len(os.sched_getaffinity(0))}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
