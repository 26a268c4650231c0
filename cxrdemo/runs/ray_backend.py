"""The Ray job backend: each run becomes one Ray task that runs `worker.execute_run` on its run directory.

The run store stays the single source of truth: the task reads `config.json` and writes `status.json`,
`metrics.csv` and `model.pt` into the run directory, which must sit on storage that the app and every
node see at the same path. The tasks are owned by a small detached actor (the launcher), not by the app,
so a sweep goes on when the app restarts, and any app process (another tab, the CLI) can cancel a run.

Importing this module does not import ray: only `connect` and the functions that talk to the cluster do.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import sys
import threading
import time
from pathlib import Path

from cxrdemo.errors import ConfigError, CxrError, RunError
from cxrdemo.runs import lifecycle
from cxrdemo.runs import store as runs

ADDRESS_ENV = "CXRDEMO_RAY_ADDRESS"
NUM_CPUS_ENV = "CXRDEMO_RAY_NUM_CPUS"
NUM_GPUS_ENV = "CXRDEMO_RAY_NUM_GPUS"
NAMESPACE = "cxrdemo"
LAUNCHER_NAME = "cxrdemo-launcher"
BEAT_EVERY_S = 5.0  # far below lifecycle.HEARTBEAT_STALE_S: a silent run on another node is really gone
PROBE_TIMEOUT_S = 3.0
# The app's own settings that a job must not inherit: where it queues locally, its niceness, Ray's address, and
# the teacher passphrase (a secret of the app: a task on another node never needs it).
_LOCAL_ONLY = ("CXRDEMO_RUNS_DIR", "CXRDEMO_MAX_JOBS", "CXRDEMO_JOB_NICE", ADDRESS_ENV, NUM_CPUS_ENV, NUM_GPUS_ENV,
               "CXRDEMO_TEACHER_PASSPHRASE")
CRASHED = ("The Ray worker training this run stopped unexpectedly (killed, out of memory, or its node left the "
           "cluster). Its last finished epoch is kept.")


class RayUnavailable(CxrError):
    """The Ray cluster cannot be used from here (not installed, unreachable); the message is one sentence."""


# ---------------------------------------------------------------- settings (no ray needed)

def configured_address() -> str | None:
    """$CXRDEMO_RAY_ADDRESS (ray://host:10001, host:6379 or auto), or None: then jobs train on this computer."""
    return os.environ.get(ADDRESS_ENV, "").strip() or None


def _resource(env: str, default: float) -> float:
    raw = os.environ.get(env, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses NaN
        raise ConfigError(f"{env}={raw!r} is not a number of {'GPUs' if 'GPU' in env else 'CPUs'} (0 or more).")
    return value


def requested_resources() -> tuple[float, float]:
    """(CPUs, GPUs) each job asks the cluster for: $CXRDEMO_RAY_NUM_CPUS (default 2), $CXRDEMO_RAY_NUM_GPUS (0)."""
    return _resource(NUM_CPUS_ENV, 2.0), _resource(NUM_GPUS_ENV, 0.0)


def job_env(num_cpus: float) -> dict[str, str]:
    """The app's CXRDEMO_* settings a job carries to its node, with torch threads matched to its CPUs."""
    env = {k: v for k, v in os.environ.items() if k.startswith("CXRDEMO_") and k not in _LOCAL_ONLY}
    env.setdefault("CXRDEMO_THREADS", str(max(1, int(num_cpus))))
    return env


def _host_port(address: str) -> tuple[str, int] | None:
    """host and port of 'ray://host:10001' or 'host:6379'; None for 'auto' or 'local' (nothing to probe)."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def unreachable_message(address: str, reason: str = "") -> str:
    """One sentence for the Trainer and the CLI when the cluster cannot be used."""
    why = f" ({reason})" if reason else ""
    return (f"The Ray cluster at {address} cannot be reached{why}; jobs can still train on this computer "
            f"(choose “this computer”, or unset {ADDRESS_ENV}).")


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when something answers at the address's port (or there is none to test), else the sentence why not."""
    target = _host_port(address)
    if target is None:
        return None
    try:
        with socket.create_connection(target, timeout=timeout_s):
            return None
    except OSError as exc:
        return unreachable_message(address, exc.strerror or exc.__class__.__name__.lower())


# ---------------------------------------------------------------- the app side

def connect(address: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Join the Ray cluster once per process (a no-op when already joined); RayUnavailable with a sentence if not."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable("Ray is not installed here: install it with `pip install -e .[ray]`, or unset "
                             f"{ADDRESS_ENV} to train on this computer.") from None
    if ray.is_initialized():
        return
    address = address or configured_address() or "auto"
    problem = probe(address, timeout_s)  # a closed port fails here in milliseconds instead of ray.init's retries
    if problem:
        raise RayUnavailable(problem)
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise RayUnavailable(unreachable_message(address, str(exc).splitlines()[0][:160] if str(exc) else "")) from None


def cluster_problem(address: str | None = None) -> str | None:
    """None when jobs can go to the cluster, else the one sentence the Trainer shows (never raises)."""
    try:
        connect(address)
    except RayUnavailable as exc:
        return str(exc)
    return None


def _launcher():
    import ray

    actor = ray.remote(num_cpus=0, max_restarts=0)(_Launcher)
    return actor.options(name=LAUNCHER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()


def submit(run_dir: Path) -> str:
    """Send a queued run to the cluster as a Ray task; records backend, task id and resources; returns the id."""
    import ray

    d = Path(run_dir)
    try:
        num_cpus, num_gpus = requested_resources()
        connect()
        # Recorded before the task exists: from then on only the task writes, and it records its own task id.
        runs.write_status(d, backend="ray", ray_num_cpus=num_cpus, ray_num_gpus=num_gpus,
                          ray_address=configured_address() or "auto")
        return ray.get(_launcher().submit.remote(str(d), job_env(num_cpus), num_cpus, num_gpus), timeout=60)
    except (CxrError, ray.exceptions.RayError) as exc:
        msg = str(exc) if isinstance(exc, CxrError) else f"The Ray cluster refused the job ({exc.__class__.__name__})."
        lifecycle.finish(d, "failed", msg, backend="ray")
        raise RayUnavailable(msg) from None


def _ask(method: str, run_dir: Path, *args):
    """Call the launcher for one run; None when Ray is not joined or the launcher is gone (unknown)."""
    ray = sys.modules.get("ray")  # never import ray (seconds) just to learn that we are not joined
    if ray is None or not ray.is_initialized():
        return None
    try:
        launcher = ray.get_actor(LAUNCHER_NAME, namespace=NAMESPACE)
        return ray.get(getattr(launcher, method).remote(str(Path(run_dir)), *args), timeout=30)
    except (ValueError, ray.exceptions.RayError):
        return None


def try_connect() -> bool:
    """connect() for callers that can do without the cluster (cancel, liveness): False instead of an error."""
    try:
        connect()
    except RayUnavailable:
        return False
    return True


def stop(run_dir: Path, force: bool = True) -> None:
    """Cancel the run's task from any process (joining the cluster if needed); with force, wait for it to end."""
    try_connect()
    if cancel(run_dir, force) and force:
        end = time.monotonic() + 10.0
        while alive(run_dir) and time.monotonic() < end:
            time.sleep(0.1)


def cancel(run_dir: Path, force: bool = True) -> bool:
    """Cancel the run's Ray task (force: kill its worker process); False when the task is unknown or done."""
    return bool(_ask("cancel", run_dir, force))


def outcome(run_dir: Path) -> dict | None:
    """None while the task is pending or running (or unknown); else how it ended: {'state', 'error'}."""
    polled = _ask("poll", run_dir)
    return polled if polled and polled["done"] else None


def alive(run_dir: Path) -> bool | None:
    """Whether the run's task is still pending or running; None when the cluster cannot tell."""
    polled = _ask("poll", run_dir)
    return None if not polled or not polled["known"] else not polled["done"]


# ---------------------------------------------------------------- the cluster side

class _Launcher:
    """A detached actor that owns the training tasks, so they outlive the app process that asked for them."""

    def __init__(self) -> None:
        import ray

        self._task = ray.remote(execute_remote)
        self._refs: dict = {}

    def submit(self, run_dir: str, env: dict, num_cpus: float, num_gpus: float) -> str:
        # max_retries=0: a run whose worker died is 'interrupted' for the user to restart, never silently rerun.
        ref = self._task.options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0,
                                 name=f"cxrdemo {Path(run_dir).name}").remote(run_dir, env)
        self._refs[run_dir] = ref
        return ref.task_id().hex()

    def cancel(self, run_dir: str, force: bool) -> bool:
        import ray

        ref = self._refs.get(run_dir)
        if ref is None or self.poll(run_dir)["done"]:
            return False
        ray.cancel(ref, force=force)
        return True

    def poll(self, run_dir: str) -> dict:
        import ray

        ref = self._refs.get(run_dir)
        if ref is None:
            return {"known": False, "done": False}
        if not ray.wait([ref], timeout=0)[0]:
            return {"known": True, "done": False}
        try:
            result = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            result = {"state": "cancelled", "error": None}
        except ray.exceptions.RayError:
            result = {"state": "interrupted", "error": CRASHED}
        return {"known": True, "done": True, "state": result.get("state"), "error": result.get("error")}


def _beat(d: Path, stop: threading.Event) -> None:
    # Beats for the whole task, decoding included: on another node a silent heartbeat is the only sign of death.
    while not stop.wait(BEAT_EVERY_S):
        with contextlib.suppress(OSError, RunError):
            lifecycle.update(d, heartbeat=time.time())


def execute_remote(run_dir: str, env: dict[str, str]) -> dict:
    """The Ray task on a node: beat, and claim and train the run with `worker.execute_run` (as a local worker does)."""
    d = Path(run_dir)
    if not (d / "config.json").is_file():
        return {"state": "failed", "error": f"The run folder {d} is not visible on Ray node {platform.node()}: put "
                                            "the runs folder on storage every node mounts at the same path."}
    import ray

    context = ray.get_runtime_context()
    claim = {"host": platform.node(), "ray_task_id": context.get_task_id(), "ray_node_id": context.get_node_id()}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # Ray reuses worker processes: the app's settings apply to this task only
    stop = threading.Event()
    threading.Thread(target=_beat, args=(d, stop), name="cxrdemo-heartbeat", daemon=True).start()
    try:
        from cxrdemo.runs.worker import execute_run

        # The same claim as a local worker: a run cancelled while it waited for the cluster is not trained.
        return execute_run(d, runs_dir=d.parent, **claim)
    finally:
        stop.set()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
