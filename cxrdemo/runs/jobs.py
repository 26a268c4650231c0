"""Background training jobs: submit, queue, cancel and reap worker processes; all state lives in the run store.

No daemon: every submitted job is its own detached process (`python -m cxrdemo worker --run-dir R`) that
waits in the local queue (`slots`) and then claims and trains its run (`worker.execute_run`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from cxrdemo import fileio, paths
from cxrdemo.config import TrainConfig
from cxrdemo.errors import RunError
from cxrdemo.runs import lifecycle, policy, slots
from cxrdemo.runs import store as runs

NEVER_STARTED = "The job was queued but its process stopped before training (the machine restarted?). Start it again."
_children: list[subprocess.Popen] = []
_children_lock = threading.Lock()


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
           max_jobs: int | None = None, backend: str | None = None, asker: policy.Asker | None = None,
           kind: str = "train") -> str:
    """Create a queued run and start it (a detached local process, or a Ray task); returns the run id at once."""
    return submit_all([(config, name)], runs_dir, max_jobs, backend, asker, kind)[0]


def submit_all(items: list[tuple[TrainConfig, str]], runs_dir: str | Path | None = None,
               max_jobs: int | None = None, backend: str | None = None, asker: policy.Asker | None = None,
               kind: str = "sweep") -> list[str]:
    """Queue every (recipe, name) of `items`, or none of them; returns the run ids at once.

    The one door into the queue: the classroom policy (`asker`: who asks; default from the environment, so the
    CLI of a classroom server is a student) and the queue's room are decided under the store's queue lock, every
    run records the asker's browser, and only then are the jobs started.
    """
    root = runs.store_dir(runs_dir)
    asker = policy.from_env() if asker is None else asker
    backend = choose_backend(backend)
    if backend == "ray":
        from cxrdemo.runs import (
            ray_backend,  # imports ray only now, and only for this backend
        )

        ray_backend.connect()  # an unreachable cluster is a sentence before any run is created
    from cxrdemo.runs.sources import check_startable

    configs = [c for c, _ in items]
    with policy.gate(asker, root, configs, kind):
        slots.check_queue_room(root, len(configs))
        for c in configs:
            check_startable(c, root)
        dirs = [runs.create_run(_located(c), root, name=n, browser=asker.browser,
                                roots=asker.roots if asker.classroom else ()) for c, n in items]
    for d in dirs:
        launch(d, root, max_jobs, backend)
    return [d.name for d in dirs]


def _located(config: TrainConfig) -> TrainConfig:
    # config.json records where the images are, whatever folder the worker (or a later reader) runs in.
    if paths.is_builtin_data(config.data):
        return config
    return config.replace(data=str(Path(config.data).expanduser().resolve()))


def launch(d: Path, root: Path, max_jobs: int | None = None, backend: str = "local") -> None:
    """Start the worker of a created, queued run: a Ray task, or a detached local process."""
    if backend == "ray":
        from cxrdemo.runs import ray_backend

        ray_backend.submit(d)
    else:
        _spawn(d, root, max_jobs)


def worker_env(root: Path, max_jobs: int) -> dict[str, str]:
    """A job process's environment: the app's, without the teacher passphrase, with the store and queue size."""
    # The worker imports the same cxrdemo as this process, installed or not.
    pythonpath = os.pathsep.join(p for p in (str(paths.PACKAGE_DIR.parent), os.environ.get("PYTHONPATH")) if p)
    env = {k: v for k, v in os.environ.items() if k != policy.PASSPHRASE_ENV}
    return {**env, "CXRDEMO_RUNS_DIR": str(root), "CXRDEMO_MAX_JOBS": str(max_jobs), "PYTHONPATH": pythonpath}


def _spawn(d: Path, root: Path, max_jobs: int | None, what: str = "training") -> None:
    """Start the detached worker process of job folder `d` (a run, or a run's side job) and record its pid."""
    n = int(max_jobs or slots.default_max_jobs())
    env = worker_env(root, n)
    with lifecycle.open_log(d) as log:  # never appends through a link to a file elsewhere
        try:
            # A new session: Streamlit reruns, closed tabs, Ctrl-C in the app's terminal never reach the job.
            proc = subprocess.Popen([sys.executable, "-m", "cxrdemo", "worker", "--run-dir", str(d)],
                                    cwd=str(root), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    close_fds=True, start_new_session=True)
        except OSError as exc:
            lifecycle.finish(d, "failed", f"Could not start the {what} process ({exc.strerror or exc}).")
            raise RunError(f"Could not start the {what} process ({exc.strerror or exc}).") from None
    _adopt(proc)
    runs.write_status(d, pid=proc.pid, max_jobs=n)


def submit_side_job(run_dir: Path, kind: str, params: dict, what: str, max_jobs: int | None = None,
                    asker: policy.Asker | None = None) -> Path:
    """Queue a job of another kind on a run (e.g. 'scorecard') in `<run>/<kind>/`; the run's status is untouched.

    The job takes a slot in the same queue as training and is cancelled like one (`cancel_dir`). RunError when
    the same kind of job is already queued or running for this run. The classroom policy counts it like a run
    of `asker`'s browser (its data folder, if any, must be allowed). Returns the job's folder.
    """
    run_dir = Path(run_dir)
    d = run_dir / kind
    root = run_dir.parent
    asker = policy.from_env() if asker is None else asker
    with policy.gate(asker, root, [], "scorecard", folders=[str(params.get("data") or "")], adding=1):
        slots.check_queue_room(root)
        fileio.own_folder(d)  # a link in its place would take the job's files (status, log) out of the run
        if lifecycle.create_side_job(d, browser=asker.browser) is None:
            raise RunError(f"The {what} of run {run_dir.name} is already queued or running: wait for it or cancel it.")
        # a classroom's allowed folders travel with the job, as with a run's config.json: its scan stays inside them
        runs.atomic_write_json(d / slots.JOB_FILE, {"kind": kind, "run": run_dir.name, "params": params, **(
            {"data_roots": [str(r) for r in asker.roots]} if asker.classroom else {})})
    (d / "log.txt").unlink(missing_ok=True)
    _spawn(d, root, max_jobs, what)
    return d


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


def resubmit(run_id: str, runs_dir: str | Path | None = None, max_jobs: int | None = None,
             asker: policy.Asker | None = None) -> str:
    """Start a finished, failed, cancelled or interrupted run again from scratch, as a new run (the policy applies:
    a student cannot restart the teacher's large run)."""
    info = runs.load_run(runs.run_dir(run_id, runs_dir))
    if info.damaged:
        raise RunError(f"Run {run_id} cannot be started again: {info.damaged}")
    return submit(TrainConfig.from_dict(info.config), runs_dir, name="again", max_jobs=max_jobs, asker=asker,
                  kind="again")


# ---------------------------------------------------------------- reading and reaping

def list_jobs(runs_dir: str | Path | None = None) -> list[runs.RunInfo]:
    """Every run, oldest first, with the truth about dead workers (read_status); reaps our exited children."""
    poll_children()
    return runs.list_runs(runs_dir)


def _how_it_ended(d: Path, raw: dict) -> tuple[str, str | None] | None:
    """For reap: how an active run ended although nobody recorded it, or None while it really is active."""
    truth = lifecycle.interpret(raw)
    if truth["state"] == "interrupted":
        return "interrupted", truth.get("error")
    ended = _ray_outcome(d) if raw.get("backend") == "ray" else None
    if ended:  # the Ray task ended without recording it (killed, crashed, run folder not visible)
        return (ended["state"] if ended["state"] in lifecycle.FINAL else "interrupted"), ended.get("error")
    if slots.dead_queued(raw):
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
    from cxrdemo.runs import (
        ray_backend,  # asks only when this process already joined the cluster
    )

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
    # The last two parts of the folder: a side job's folder name ('scorecard') alone names no run.
    tail = "/".join(Path(d).parts[-2:]).encode()
    return b"cxrdemo" in cmdline and any(arg.rstrip(b"/").endswith(tail) for arg in cmdline)


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
    return cancel_dir(runs.run_dir(run_id, runs_dir), grace_s)


def cancel_dir(d: Path, grace_s: float = 10.0) -> dict:
    """`cancel` for a job folder: a run, or a run's side job (`<run>/<kind>/`)."""
    kind = slots.job_kind(d)
    name = f"Run {d.name}" if kind == "train" else f"The {kind} job of run {d.parent.name}"
    before, status = lifecycle.request_cancel(d)
    if before == "finishing":
        raise RunError(f"{name} has finished training and is being calibrated and tested: it ends by itself within "
                       "about a minute, so it cannot be cancelled now. Delete it afterwards if you do not want it.")
    if before == "queued":
        if status.get("backend") == "ray":
            from cxrdemo.runs import ray_backend

            ray_backend.stop(d, force=False)  # not started: Ray drops it (and the task itself checks the state)
        return status
    if status.get("state") != "running":
        raise RunError(f"{name} is {status.get('state')}; there is nothing to cancel.")
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
