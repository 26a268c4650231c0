"""Background training jobs: submit, queue, cancel and reap worker processes; all state lives in the run store.

No daemon: every submitted job is its own detached process that first waits for a free slot. A slot is
an `flock` on one of N files in `<runs>/.slots/`; the OS releases it when the holder dies, so a crashed
job never blocks the queue. A worker only takes a slot when its run is the oldest live queued run, which
keeps first-in first-out order.

Waiting stays cheap: only the worker holding the queue-head lock (`.slots/next.lock`, also an flock) reads
the queue and polls the slots; the others try that lock with a back-off of a few seconds, read nothing but
their own cancel file, and say they are alive every QUEUED_HEARTBEAT_S. Waiting workers do not import
torch (only the head does, while the job ahead still trains), and at most CXRDEMO_MAX_QUEUED jobs wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from cxrdemo import paths
from cxrdemo.config import TrainConfig
from cxrdemo.errors import RunError
from cxrdemo.runs import lifecycle
from cxrdemo.runs import store as runs

SLOTS_DIR = ".slots"
HEAD_LOCK = "next.lock"
POLL_S = 0.5  # the head of the queue checks for a free slot this often
BACKOFF_MAX_S = 2.0  # the other waiters try the head lock at most this far apart
QUEUED_HEARTBEAT_S = 20.0  # far below lifecycle.HEARTBEAT_STALE_S: a waiter that stops beating is gone
DEFAULT_MAX_QUEUED = 50
UNSTARTED_GRACE_S = 60.0  # a queued run with no worker pid after this long was never started
NEVER_STARTED = "The job was queued but its process stopped before training (the machine restarted?). Start it again."
_children: list[subprocess.Popen] = []
_children_lock = threading.Lock()


def max_queued() -> int:
    """Jobs allowed to wait at once: $CXRDEMO_MAX_QUEUED, else 50 (one sweep click cannot flood the machine)."""
    env = os.environ.get("CXRDEMO_MAX_QUEUED", "").strip()
    return int(env) if env.isdigit() and int(env) >= 1 else DEFAULT_MAX_QUEUED


def check_queue_room(runs_dir: str | Path | None = None, adding: int = 1) -> None:
    """RunError with a sentence when `adding` more jobs would take the queue past max_queued()."""
    waiting = sum(1 for info in runs.list_runs(runs_dir) if info.state == "queued")
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


# ---------------------------------------------------------------- submitting

BACKENDS = ("local", "ray")


def choose_backend(backend: str | None = None) -> str:
    """'local' (a process on this computer) or 'ray' (a task on a Ray cluster): as asked, else by $CXRDEMO_RAY_ADDRESS."""
    if backend is None:
        backend = "ray" if os.environ.get("CXRDEMO_RAY_ADDRESS", "").strip() else "local"
    if backend not in BACKENDS:
        raise RunError(f"Unknown job backend {backend!r}: choose local or ray.")
    return backend


def submit(config: TrainConfig, runs_dir: str | Path | None = None, name: str = "",
           max_jobs: int | None = None, backend: str | None = None) -> str:
    """Create a queued run and start it (a detached local process, or a Ray task); returns the run id at once."""
    root = runs.store_dir(runs_dir)
    if choose_backend(backend) == "ray":
        from cxrdemo.runs import ray_backend  # imports ray only now, and only for this backend

        ray_backend.connect()  # an unreachable cluster is a sentence before any run is created
    # Imports torch (the checks ask the backbone registry); only submitting does, never a waiting worker.
    from cxrdemo.model.train import check_startable

    check_queue_room(root)
    check_startable(config, root)
    if config.data.strip().lower() != "demo":
        # config.json records where the images are, whatever folder the worker (or a later reader) runs in.
        config = config.replace(data=str(Path(config.data).expanduser().resolve()))
    d = runs.create_run(config, root, name=name)
    if choose_backend(backend) == "ray":
        ray_backend.submit(d)
        return d.name
    n = int(max_jobs or default_max_jobs())
    # The worker imports the same cxrdemo as this process, installed or not.
    pythonpath = os.pathsep.join(p for p in (str(paths.PACKAGE_DIR.parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "CXRDEMO_RUNS_DIR": str(root), "CXRDEMO_MAX_JOBS": str(n), "PYTHONPATH": pythonpath}
    with open(d / "log.txt", "ab") as log:
        try:
            # A new session: Streamlit reruns, closed tabs, Ctrl-C in the app's terminal never reach the job.
            proc = subprocess.Popen([sys.executable, "-m", "cxrdemo", "worker", "--run-dir", str(d)],
                                    cwd=str(root), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    close_fds=True, start_new_session=True)
        except OSError as exc:
            lifecycle.finish(d, "failed", f"Could not start the training process ({exc.strerror or exc}).")
            raise RunError(f"Could not start the training process ({exc.strerror or exc}).") from None
    _adopt(proc)
    runs.write_status(d, pid=proc.pid, max_jobs=n)
    return d.name


def _adopt(proc: subprocess.Popen) -> None:
    # A child that is never waited for stays a zombie while the app lives: wait for it in a daemon thread.
    with _children_lock:
        _children.append(proc)
    threading.Thread(target=_wait_child, args=(proc,), name=f"cxrdemo-job-{proc.pid}", daemon=True).start()


def _wait_child(proc: subprocess.Popen) -> None:
    proc.wait()
    with _children_lock:
        with contextlib.suppress(ValueError):
            _children.remove(proc)


def poll_children() -> int:
    """Reap finished worker processes started by this process; returns how many are still running."""
    with _children_lock:
        for proc in list(_children):
            if proc.poll() is not None:
                _children.remove(proc)
        return len(_children)


def resubmit(run_id: str, runs_dir: str | Path | None = None, max_jobs: int | None = None) -> str:
    """Start a finished, failed, cancelled or interrupted run again from scratch, as a new run."""
    info = runs.load_run(runs.run_dir(run_id, runs_dir))
    if info.damaged:
        raise RunError(f"Run {run_id} cannot be started again: {info.damaged}")
    return submit(TrainConfig.from_dict(info.config), runs_dir, name="again", max_jobs=max_jobs)


# ---------------------------------------------------------------- reading and reaping

def list_jobs(runs_dir: str | Path | None = None) -> list[runs.RunInfo]:
    """Every run, oldest first, with the truth about dead workers (read_status); reaps our exited children."""
    poll_children()
    return runs.list_runs(runs_dir)


def _dead_queued(raw: dict) -> bool:
    """A queued run nobody waits for: never got a process, or its waiting worker stopped beating."""
    if raw.get("state") != "queued" or raw.get("backend") == "ray":
        return False  # a Ray task may wait hours for a free GPU; the cluster says when it is gone (reap)
    if not raw.get("pid"):
        return time.time() - float(raw.get("created") or raw.get("updated") or 0) > UNSTARTED_GRACE_S
    beat = float(raw.get("heartbeat") or raw.get("updated") or 0)
    return time.time() - beat > lifecycle.HEARTBEAT_STALE_S  # waiting workers beat every QUEUED_HEARTBEAT_S


def _how_it_ended(d: Path, raw: dict) -> tuple[str, str | None] | None:
    """For reap: how an active run ended although nobody recorded it, or None while it really is active."""
    truth = lifecycle.interpret(raw)
    if truth["state"] == "interrupted":
        return "interrupted", truth.get("error")
    ended = _ray_outcome(d) if raw.get("backend") == "ray" else None
    if ended:  # the Ray task ended without recording it (killed, crashed, run folder not visible)
        return (ended["state"] if ended["state"] in lifecycle.FINAL else "interrupted"), ended.get("error")
    if _dead_queued(raw):
        return "interrupted", NEVER_STARTED
    return None


def reap(runs_dir: str | Path | None = None) -> list[str]:
    """Persist 'interrupted' for active runs whose worker is gone; returns their ids."""
    poll_children()
    reaped = []
    for info in runs.list_runs(runs_dir):
        if info.damaged or info.state not in lifecycle.ACTIVE + ("interrupted",):
            continue
        if lifecycle.settle(info.path, lambda raw, d=info.path: _how_it_ended(d, raw)):
            reaped.append(info.run_id)
    return reaped


def _ray_outcome(d: Path) -> dict | None:
    from cxrdemo.runs import ray_backend  # asks only when this process already joined the cluster

    return ray_backend.outcome(d)


# ---------------------------------------------------------------- cancelling

def _is_worker_of(pid: int, d: Path) -> bool:
    # Never signal a recycled pid: the process must be a cxrdemo worker of this very run.
    if not Path("/proc").is_dir():
        return lifecycle.pid_alive(pid)  # no /proc (macOS): the pid in status.json is all we know
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"cxrdemo" in cmdline and any(arg.rstrip(b"/").endswith(d.name.encode()) for arg in cmdline)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the worker leads its own session: this also stops anything it started
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _stop_local(pid: int | None, d: Path) -> None:
    if pid and _is_worker_of(pid, d):
        _signal(int(pid), signal.SIGTERM)
        if not _wait_until(lambda: not lifecycle.pid_alive(pid), 3.0):
            _signal(int(pid), signal.SIGKILL)
            _wait_until(lambda: not lifecycle.pid_alive(pid), 3.0)


def _wait_until(pred, timeout_s: float, step_s: float = 0.1) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step_s)
    return pred()


def cancel(run_id: str, runs_dir: str | Path | None = None, grace_s: float = 10.0) -> dict:
    """Cancel a queued run at once, or ask a running one to stop (killed after `grace_s`); returns its status."""
    d = runs.run_dir(run_id, runs_dir)
    before, status = lifecycle.request_cancel(d)
    if before == "queued":
        if status.get("backend") == "ray":
            from cxrdemo.runs import ray_backend

            ray_backend.stop(d, force=False)  # not started: Ray drops it (and the task itself checks the state)
        return status
    if status.get("state") != "running":
        raise RunError(f"Run {run_id} is {status.get('state')}; there is nothing to cancel.")
    if status.get("backend") == "ray":
        from cxrdemo.runs import ray_backend

        ray_backend.try_connect()  # the CLI, or a restarted app, may cancel a run another process sent
        alive, stop = (lambda: ray_backend.alive(d) is not False), (lambda: ray_backend.stop(d, force=True))
    else:
        pid = status.get("pid")
        alive, stop = (lambda: lifecycle.pid_alive(pid)), (lambda: _stop_local(pid, d))
    finished = lambda: lifecycle.read_status(d).get("state") not in lifecycle.ACTIVE or not alive()  # noqa: E731
    if not _wait_until(finished, grace_s):
        stop()
    poll_children()
    # Killed before it could record the cancel itself: its last finished epoch is kept.
    return lifecycle.settle(d, lambda raw: ("cancelled", None)) or runs.read_json(d / "status.json")


# ---------------------------------------------------------------- the worker side

def _queue_order(root: Path) -> list[str]:
    """Ids of live queued runs, oldest first (creation time, then id), as the workers must start them."""
    out = []
    for info in runs.list_runs(root):
        if info.damaged or info.state != "queued" or lifecycle.cancel_requested(info.path):
            continue
        if info.status.get("backend") == "ray":
            continue  # the cluster schedules those; they never hold a local slot
        if _dead_queued(info.status):
            continue
        out.append(info.run_id)
    return out


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
    root = d.parent
    if _queue_order(root)[:1] != [d.name]:
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
    (d.parent / SLOTS_DIR).mkdir(parents=True, exist_ok=True)
    waiting = _Waiting(d)
    backoff = poll_s
    while waiting.queued():
        head = _try_lock(d.parent / SLOTS_DIR / HEAD_LOCK)
        if head is not None:
            with head:  # closing it releases the head lock for the next in line
                slot = _lead(d, n, waiting, poll_s)
            if slot is not None:
                return slot
            backoff = BACKOFF_MAX_S  # not first in line: leave the head lock to the run that is
        time.sleep(backoff)
        backoff = min(2 * backoff, BACKOFF_MAX_S)
    return None


def run_worker(run_dir: str | Path, max_jobs: int | None = None) -> dict:
    """The body of a job process: lower priority, wait for a slot in queue order, then claim the run and train it."""
    d = Path(run_dir).resolve()
    with contextlib.suppress(OSError, AttributeError, ValueError):
        os.nice(int(os.environ.get("CXRDEMO_JOB_NICE", "5")))  # the app stays responsive while a job trains
    slot = wait_for_slot(d, max_jobs)
    if slot is None:
        return {**lifecycle.read_status(d), "claimed": False}
    try:
        from cxrdemo.runs.worker import execute_run  # torch is imported only once this job may run

        return execute_run(d, runs_dir=d.parent)
    finally:
        slot.close()
