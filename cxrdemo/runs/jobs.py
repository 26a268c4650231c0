"""Background training jobs: submit, queue, cancel and reap worker processes; all state lives in the run store.

No daemon: every submitted job is its own detached process that first waits for a free slot. A slot is
an `flock` on one of N files in `<runs>/.slots/`; the OS releases it when the holder dies, so a crashed
job never blocks the queue. A worker only takes a slot when its run is the oldest live queued run, which
keeps first-in first-out order. Waiting workers do not import torch, so a long sweep queue stays light.
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
from cxrdemo.runs import store as runs
from cxrdemo.config import TrainConfig
from cxrdemo.errors import RunError

CANCEL_FILE = "cancel"  # must equal worker.CANCEL_FILE (worker imports torch; waiting workers must not)
SLOTS_DIR = ".slots"
POLL_S = 0.5
QUEUED_HEARTBEAT_S = 5.0
UNSTARTED_GRACE_S = 60.0  # a queued run with no worker pid after this long was never started
NEVER_STARTED = "The job was queued but its process stopped before training (the machine restarted?). Start it again."
_children: list[subprocess.Popen] = []
_children_lock = threading.Lock()


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
    from cxrdemo.model.train import check_startable  # torch is needed here anyway: the page built the config with it

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
            proc = subprocess.Popen([sys.executable, "-m", "cxrdemo", "jobs-worker", "--run-dir", str(d)],
                                    cwd=str(root), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    close_fds=True, start_new_session=True)
        except OSError as exc:
            runs.write_status(d, state="failed", finished=time.time(),
                              error=f"Could not start the training process ({exc.strerror or exc}).")
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


def _merge_locked(d: Path, **updates) -> dict:
    # write_status takes the run lock itself; this variant is for callers already holding it.
    try:
        status = runs.read_json(d / "status.json")
    except RunError:
        status = {}
    status.update(updates, updated=time.time())
    runs.atomic_write_json(d / "status.json", status)
    return status


def _dead_queued(raw: dict) -> bool:
    """A queued run nobody waits for: never got a process, or its waiting worker stopped beating."""
    if raw.get("state") != "queued" or raw.get("backend") == "ray":
        return False  # a Ray task may wait hours for a free GPU; the cluster says when it is gone (reap)
    if not raw.get("pid"):
        return time.time() - float(raw.get("created") or raw.get("updated") or 0) > UNSTARTED_GRACE_S
    beat = float(raw.get("heartbeat") or raw.get("updated") or 0)
    return time.time() - beat > runs.HEARTBEAT_STALE_S  # waiting workers beat every few seconds


def reap(runs_dir: str | Path | None = None) -> list[str]:
    """Persist 'interrupted' for active runs whose worker is gone; returns their ids."""
    poll_children()
    reaped = []
    for info in runs.list_runs(runs_dir):
        if info.damaged or info.state not in runs.ACTIVE + ("interrupted",):
            continue
        with runs.run_lock(info.path):
            raw = runs.read_json(info.path / "status.json")
            if raw.get("state") not in runs.ACTIVE:
                continue
            truth = runs.read_status(info.path)
            ended = _ray_outcome(info.path) if raw.get("backend") == "ray" else None
            if truth["state"] == "interrupted":
                _merge_locked(info.path, state="interrupted", error=truth.get("error"), finished=time.time())
            elif ended:  # the Ray task ended without recording it (killed, crashed, run folder not visible)
                _merge_locked(info.path, state=ended["state"] if ended["state"] in runs.FINAL else "interrupted",
                              error=ended.get("error"), finished=time.time())
            elif _dead_queued(raw):
                _merge_locked(info.path, state="interrupted", error=NEVER_STARTED, finished=time.time())
            else:
                continue
        reaped.append(info.run_id)
    return reaped


def _ray_outcome(d: Path) -> dict | None:
    from cxrdemo.runs import ray_backend  # asks only when this process already joined the cluster

    return ray_backend.outcome(d)


# ---------------------------------------------------------------- cancelling

def _is_worker_of(pid: int, d: Path) -> bool:
    # Never signal a recycled pid: the process must be a cxrdemo worker of this very run.
    if not Path("/proc").is_dir():
        return runs.pid_alive(pid)  # no /proc (macOS): the pid in status.json is all we know
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
        if not _wait_until(lambda: not runs.pid_alive(pid), 3.0):
            _signal(int(pid), signal.SIGKILL)
            _wait_until(lambda: not runs.pid_alive(pid), 3.0)


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
    with runs.run_lock(d):
        # Read the state and leave the request under one lock: a worker records its own transitions under it,
        # so it cannot finish (or claim its slot) between what we read and what we ask.
        status = runs.read_status(d)
        if status.get("state") in runs.ACTIVE:
            runs.atomic_write_bytes(d / CANCEL_FILE, str(time.time()).encode())
        if status.get("state") == "queued":
            cancelled = _merge_locked(d, state="cancelled", finished=time.time(), error=None)
    if status.get("state") == "queued":
        if status.get("backend") == "ray":
            from cxrdemo.runs import ray_backend

            ray_backend.stop(d, force=False)  # not started: Ray drops it (and the task itself checks the state)
        return cancelled
    if status.get("state") != "running":
        raise RunError(f"Run {run_id} is {status.get('state')}; there is nothing to cancel.")
    if status.get("backend") == "ray":
        from cxrdemo.runs import ray_backend

        ray_backend.try_connect()  # the CLI, or a restarted app, may cancel a run another process sent
        alive, stop = (lambda: ray_backend.alive(d) is not False), (lambda: ray_backend.stop(d, force=True))
    else:
        pid = status.get("pid")
        alive, stop = (lambda: runs.pid_alive(pid)), (lambda: _stop_local(pid, d))
    finished = lambda: runs.read_status(d).get("state") not in runs.ACTIVE or not alive()  # noqa: E731
    if not _wait_until(finished, grace_s):
        stop()
    poll_children()
    with runs.run_lock(d):
        raw = runs.read_json(d / "status.json")
        if raw.get("state") in runs.ACTIVE:
            # Killed before it could record the cancel itself: its last finished epoch is kept.
            return _merge_locked(d, state="cancelled", finished=time.time(), error=None)
        return raw


# ---------------------------------------------------------------- the worker side

def _queue_order(root: Path) -> list[str]:
    """Ids of live queued runs, oldest first (creation time, then id), as the workers must start them."""
    out = []
    for info in runs.list_runs(root):
        if info.damaged or info.state != "queued" or (info.path / CANCEL_FILE).exists():
            continue
        if info.status.get("backend") == "ray":
            continue  # the cluster schedules those; they never hold a local slot
        if _dead_queued(info.status):
            continue
        out.append(info.run_id)
    return out


def _try_slot(root: Path, n: int) -> IO | None:
    slots = root / SLOTS_DIR
    slots.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        f = open(slots / f"{i}.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        return f
    return None


def wait_for_slot(run_dir: Path, max_jobs: int | None = None, poll_s: float = POLL_S) -> IO | None:
    """Block until this queued run may start; returns the held slot (keep it open) or None if cancelled."""
    d = Path(run_dir)
    root, n = d.parent, int(max_jobs or default_max_jobs())
    last_beat = 0.0
    while True:
        with runs.run_lock(d):
            raw = runs.read_json(d / "status.json")
            if raw.get("state") != "queued":
                return None
            if (d / CANCEL_FILE).exists():
                _merge_locked(d, state="cancelled", finished=time.time(), error=None)
                return None
            if time.time() - last_beat >= QUEUED_HEARTBEAT_S:
                last_beat = time.time()
                _merge_locked(d, pid=os.getpid(), heartbeat=last_beat)
        order = _queue_order(root)
        if order and order[0] == d.name:
            # Next in line: load torch now, while the job ahead still trains, not after it ends.
            import cxrdemo.runs.worker  # noqa: F401

            slot = _try_slot(root, n)
            if slot is not None:
                with runs.run_lock(d):
                    raw = runs.read_json(d / "status.json")
                    if raw.get("state") == "queued" and not (d / CANCEL_FILE).exists():
                        # 'running' under the lock: from now on a cancel goes through the cancel file.
                        _merge_locked(d, state="running", pid=os.getpid(), started=time.time(), heartbeat=time.time())
                        return slot
                slot.close()
                continue
        time.sleep(poll_s)


def run_worker(run_dir: str | Path, max_jobs: int | None = None) -> dict:
    """The body of a job process: lower priority, wait for a slot in queue order, then train."""
    d = Path(run_dir).resolve()
    with contextlib.suppress(OSError, AttributeError, ValueError):
        os.nice(int(os.environ.get("CXRDEMO_JOB_NICE", "5")))  # the app stays responsive while a job trains
    runs.write_status(d, pid=os.getpid(), heartbeat=time.time())
    slot = wait_for_slot(d, max_jobs)
    if slot is None:
        return runs.read_status(d)
    try:
        from cxrdemo.runs.worker import execute_run  # torch is imported only once this job may run

        return execute_run(d, runs_dir=d.parent)
    finally:
        slot.close()
