"""The local job queue: slots, first-in first-out order, and waiting workers that cost almost nothing.

A slot is an `flock` on one of N files in `<runs>/.slots/`; the OS releases it when the holder dies, so a
crashed job never blocks the queue. A worker only takes a slot when its run is the oldest live queued run,
which keeps first-in first-out order.

Waiting stays cheap: only the worker holding the queue-head lock (`.slots/next.lock`, also an flock) reads
the queue and polls the slots; the others try that lock with a back-off of a few seconds, read nothing but
their own cancel file (a stat), and say they are alive every QUEUED_HEARTBEAT_S. Waiting workers do not
import torch (only the head does, while the job ahead still trains), and at most CXRDEMO_MAX_QUEUED wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import IO, Callable

from cxrdemo.errors import RunError
from cxrdemo.runs import lifecycle
from cxrdemo.runs import store as runs

SLOTS_DIR = ".slots"
HEAD_LOCK = "next.lock"
POLL_S = 0.5  # the head of the queue checks for a free slot this often
BACKOFF_MAX_S = 4.0  # the other waiters try the head lock at most this far apart (50 of them: ~1% of a core)
QUEUED_HEARTBEAT_S = 30.0  # far below lifecycle.HEARTBEAT_STALE_S: a waiter that stops beating is gone
DEFAULT_MAX_QUEUED = 50
UNSTARTED_GRACE_S = 60.0  # a queued run with no worker pid after this long was never started
JOB_FILE = "job.json"  # a side job's folder (`<run>/<kind>/`) says its kind and parameters here; a run has none


def max_queued() -> int:
    """Jobs allowed to wait at once: $CXRDEMO_MAX_QUEUED, else 50 (one sweep click cannot flood the machine)."""
    env = os.environ.get("CXRDEMO_MAX_QUEUED", "").strip()
    return int(env) if env.isdigit() and int(env) >= 1 else DEFAULT_MAX_QUEUED


def check_queue_room(runs_dir: str | Path | None = None, adding: int = 1) -> None:
    """RunError with a sentence when `adding` more jobs would take the queue past max_queued() (side jobs count)."""
    waiting = 0
    for info in runs.list_runs(runs_dir):
        waiting += info.state == "queued"
        if not info.damaged:
            waiting += sum(_raw_status(d).get("state") == "queued" for d in side_job_dirs(info.path))
    cap = max_queued()
    if waiting + adding > cap:
        raise RunError(f"The job queue is full: {waiting} job(s) are waiting and at most {cap} may wait "
                       f"(CXRDEMO_MAX_QUEUED). Let some finish or cancel some, then start again.")


def default_max_jobs() -> int:
    """Concurrent jobs: $CXRDEMO_MAX_JOBS, else 1 on a small machine (<8 cores), up to 4 on a big one."""
    env = os.environ.get("CXRDEMO_MAX_JOBS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores // 4))


# ---------------------------------------------------------------- the queue

def dead_queued(raw: dict) -> bool:
    """A queued run nobody waits for: never got a process, or its waiting worker stopped beating."""
    if raw.get("state") != "queued" or raw.get("backend") == "ray":
        return False  # a Ray task may wait hours for a free GPU; the cluster says when it is gone (reap)
    if not raw.get("pid"):
        return time.time() - float(raw.get("created") or raw.get("updated") or 0) > UNSTARTED_GRACE_S
    beat = float(raw.get("heartbeat") or raw.get("updated") or 0)
    return time.time() - beat > lifecycle.HEARTBEAT_STALE_S  # waiting workers beat every QUEUED_HEARTBEAT_S


# ---------------------------------------------------------------- waiting for a slot

def queue_order(root: Path) -> list[str]:
    """Keys of live queued jobs, oldest first (creation time, then key), as the workers must start them.

    A training job's key is its run id; a side job's (e.g. a CAM scorecard) is `<run id>/<kind>`.
    """
    waiting = []
    for info in runs.list_runs(root):
        if info.damaged:
            continue
        for d in (info.path, *side_job_dirs(info.path)):
            raw = info.status if d == info.path else _raw_status(d)
            if raw.get("state") != "queued" or lifecycle.cancel_requested(d):
                continue
            if raw.get("backend") == "ray" or dead_queued(raw):
                continue  # the cluster schedules Ray jobs; they never hold a local slot
            # A run's place is its config.json time (the order list_runs and the pages show); a side job's, its own.
            created = info.meta.get("created") if d == info.path else raw.get("created")
            waiting.append((float(created or 0), job_key(root, d)))
    return [key for _, key in sorted(waiting)]


# ---------------------------------------------------------------- job kinds

def job_kind(d: Path) -> str:
    """'train' for a run folder; a side job's kind (e.g. 'scorecard') from its job.json."""
    f = Path(d) / JOB_FILE
    return str(runs.read_json(f).get("kind") or "train") if f.is_file() else "train"


def store_of(d: Path) -> Path:
    """The run store a job folder belongs to: a run's parent, or a side job's run's parent."""
    d = Path(d)
    return d.parent.parent if (d / JOB_FILE).is_file() else d.parent


def job_key(root: Path, d: Path) -> str:
    """A job's name in the queue: its folder relative to the store ('run' or 'run/scorecard')."""
    return Path(d).resolve().relative_to(Path(root).resolve()).as_posix()


def side_job_dirs(run_dir: Path) -> list[Path]:
    """The side-job folders of one run (each holds a job.json)."""
    return [f.parent for f in sorted(Path(run_dir).glob(f"*/{JOB_FILE}"))]


def _raw_status(d: Path) -> dict:
    try:
        return runs.read_json(Path(d) / lifecycle.STATUS_FILE)
    except RunError:
        return {}


def _try_lock(path: Path) -> IO | None:
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _try_slot(root: Path, n: int) -> IO | None:
    slots = root / SLOTS_DIR
    slots.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        f = _try_lock(slots / f"{i}.lock")
        if f is not None:
            return f
    return None


class _Waiting:
    """A waiting worker's view of its own run: cheap to ask often, beats every QUEUED_HEARTBEAT_S."""

    def __init__(self, d: Path) -> None:
        self.d, self.last_beat = d, 0.0

    def queued(self) -> bool:
        if lifecycle.cancel_requested(self.d):  # a stat, not a read: cancelled waiters leave within seconds
            return lifecycle.still_queued(self.d)
        if time.monotonic() - self.last_beat < QUEUED_HEARTBEAT_S:
            return True
        self.last_beat = time.monotonic()
        return lifecycle.still_queued(self.d, beat=True)


def _lead(d: Path, n: int, waiting: _Waiting, poll_s: float) -> IO | None:
    """Holding the queue-head lock: if this run is first in line, wait for a slot; None if it is not (any more)."""
    root = store_of(d)
    if queue_order(root)[:1] != [job_key(root, d)]:
        return None
    # Next in line: load torch now, while the job ahead still trains, not after it ends.
    import cxrdemo.runs.worker  # noqa: F401

    while waiting.queued():
        slot = _try_slot(root, n)
        if slot is not None:
            return slot
        time.sleep(poll_s)
    return None


def wait_for_slot(run_dir: Path, max_jobs: int | None = None, poll_s: float = POLL_S) -> IO | None:
    """Block until this queued run may start; returns the held slot (keep it open) or None if it is not queued."""
    d = Path(run_dir)
    n = int(max_jobs or default_max_jobs())
    root = store_of(d)
    (root / SLOTS_DIR).mkdir(parents=True, exist_ok=True)
    waiting = _Waiting(d)
    backoff = poll_s
    with open(root / SLOTS_DIR / HEAD_LOCK, "a+") as head:  # opened once: each try is one flock call
        while waiting.queued():
            try:
                fcntl.flock(head, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                try:
                    slot = _lead(d, n, waiting, poll_s)
                finally:
                    fcntl.flock(head, fcntl.LOCK_UN)  # the next in line may lead now
                if slot is not None:
                    return slot
                backoff = BACKOFF_MAX_S  # not first in line: leave the head lock to the run that is
            time.sleep(backoff)
            backoff = min(2 * backoff, BACKOFF_MAX_S)
    return None


def run_worker(run_dir: str | Path, max_jobs: int | None = None,
               execute: Callable[[Path], dict] | None = None) -> dict:
    """The body of a job process: lower priority, wait for a slot in queue order, then claim and run the job.

    execute(job folder) runs a side job (the CLI picks it by job_kind); by default the run is trained.
    """
    d = Path(run_dir).resolve()
    with contextlib.suppress(OSError, AttributeError, ValueError):
        os.nice(int(os.environ.get("CXRDEMO_JOB_NICE", "5")))  # the app stays responsive while a job trains
    # Jobs x threads <= cores: the training process sizes its torch and decode threads by the slot count.
    os.environ["CXRDEMO_MAX_JOBS"] = str(int(max_jobs or default_max_jobs()))
    slot = wait_for_slot(d, max_jobs)
    if slot is None:
        return {**lifecycle.read_status(d), "claimed": False}
    try:
        if execute is not None:
            return execute(d)
        from cxrdemo.runs.worker import (
            execute_run,  # torch is imported only once this job may run
        )

        return execute_run(d, runs_dir=d.parent)
    finally:
        slot.close()
