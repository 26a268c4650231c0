"""Idle CPU of a queue of waiting jobs: N worker processes wait behind a slot that never frees.

    python benchmarks/bench_idle_queue.py                       # this checkout, 50 jobs, 20 s
    python benchmarks/bench_idle_queue.py --old /tmp/cxr-old    # and the same with another checkout, side by side

Each job is the real worker process a submit starts (`python -m cxrdemo worker --run-dir ...`, or the old
`jobs-worker`), with one slot (CXRDEMO_MAX_JOBS=1) held by this script, so every job waits. Once all of
them have said they are alive and `--settle` seconds have passed (the head of the queue imports torch),
the script sums their user+system CPU time over `--seconds` from /proc and reports it as % of one core.
Target (issue 17): under 2% for 50 waiting jobs.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrdemo.config import TrainConfig  # noqa: E402
from cxrdemo.runs import store as runs  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def worker_command(code: Path) -> str:
    """The hidden worker sub-command of that checkout: `worker` now, `jobs-worker` before the lifecycle change."""
    return "jobs-worker" if '"jobs-worker"' in (code / "cxrdemo" / "cli" / "jobs.py").read_text() else "worker"


def measure(code: Path, jobs: int, seconds: float, settle: float) -> dict:
    """Queue `jobs` waiting workers of checkout `code` behind a held slot; their CPU over `seconds`."""
    root = Path(tempfile.mkdtemp(prefix="cxr-idle-")) / "runs"
    procs: list[subprocess.Popen] = []
    try:
        (root / ".slots").mkdir(parents=True)
        slot = open(root / ".slots" / "0.lock", "a+")
        fcntl.flock(slot, fcntl.LOCK_EX)  # the job that 'trains' forever
        env = {**os.environ, "PYTHONPATH": str(code), "CXRDEMO_RUNS_DIR": str(root), "CXRDEMO_MAX_JOBS": "1",
               "CXRDEMO_JOB_NICE": "0", "CXRDEMO_OFFLINE": "1"}
        entry = worker_command(code)
        for k in range(jobs):
            d = runs.create_run(TrainConfig(data="demo", epochs=1, seed=k), root)
            procs.append(subprocess.Popen([sys.executable, "-m", "cxrdemo", entry, "--run-dir", str(d)], cwd=code,
                                          env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))
            runs.write_status(d, pid=procs[-1].pid)
        end = time.monotonic() + 300
        while time.monotonic() < end:
            beats = [json.loads((d / "status.json").read_text()).get("heartbeat") for d in root.iterdir()
                     if d.is_dir() and not d.name.startswith(".")]
            if all(beats):
                break
            time.sleep(0.5)
        time.sleep(settle)
        alive = [p for p in procs if p.poll() is None]
        before = sum(cpu_seconds(p.pid) for p in alive)
        t0 = time.monotonic()
        time.sleep(seconds)
        used = sum(cpu_seconds(p.pid) for p in alive) - before
        wall = time.monotonic() - t0
        slot.close()
        return {"code": str(code), "entry": entry, "jobs": jobs, "alive": len(alive), "seconds": round(wall, 1),
                "cpu_s": round(used, 3), "percent_of_one_core": round(100 * used / wall, 2)}
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        shutil.rmtree(root.parent, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after the last job started beating")
    ap.add_argument("--old", type=Path, help="another checkout (e.g. `git worktree add --detach DIR a2a5d64`)")
    args = ap.parse_args()
    results = []
    if args.old:
        results.append(("before", measure(args.old.resolve(), args.jobs, args.seconds, args.settle)))
    results.append(("after" if args.old else "this checkout", measure(REPO, args.jobs, args.seconds, args.settle)))
    for label, r in results:
        print(f"{label:>13}: {r['alive']}/{r['jobs']} waiting jobs ({r['entry']}) used {r['cpu_s']:.2f} CPU s in "
              f"{r['seconds']:.0f} s = {r['percent_of_one_core']:.2f}% of one core", flush=True)
    print(json.dumps([r for _, r in results]))


if __name__ == "__main__":
    main()
