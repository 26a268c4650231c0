"""The Ray job backend: pure checks always run; the cluster tests start a real local Ray head on loopback.

The cluster tests skip only when Ray is not installed (`pip install -e .[ray]`). Jobs are cnn8, 32 px, on
conftest's tiny dataset; every wait is bounded.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrdemo.errors import ConfigError, CxrError
from cxrdemo.runs import jobs, lifecycle, ray_backend, slots
from cxrdemo.runs import store as runs
from tests.helpers import fake_status
from tests.helpers import tiny_config as tiny
from tests.helpers import wait_for as _wait_for

TIMEOUT_S = 180.0  # a cold Ray worker imports torch: slow on a busy 2-core machine


@pytest.fixture
def store(store, monkeypatch):
    """conftest's private run store, with one CPU per Ray job and no cluster address from the environment."""
    monkeypatch.setenv("CXRDEMO_RAY_NUM_CPUS", "1")
    monkeypatch.delenv("CXRDEMO_RAY_ADDRESS", raising=False)
    return store


def wait_for(pred, timeout: float = TIMEOUT_S, step: float = 0.1):
    return _wait_for(pred, timeout, step)


def status(root: Path, run_id: str) -> dict:
    return runs.read_status(root / run_id)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again at once: nothing listens there


# ---------------------------------------------------------------- without a cluster

def test_importing_cxrdemo_does_not_import_ray():
    code = ("import sys, cxrdemo, cxrdemo.runs.jobs, cxrdemo.runs.ray_backend, cxrdemo.runs.store, cxrdemo.cli.main, cxrdemo.views.trainer;"
            "from cxrdemo.runs import jobs; jobs.choose_backend(); print('ray' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "CXRDEMO_RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_backend_choice_and_resources(monkeypatch):
    monkeypatch.delenv("CXRDEMO_RAY_ADDRESS", raising=False)
    assert jobs.choose_backend() == "local"
    monkeypatch.setenv("CXRDEMO_RAY_ADDRESS", "ray://gpu-server:10001")
    assert jobs.choose_backend() == "ray" and jobs.choose_backend("local") == "local"
    with pytest.raises(CxrError, match="Unknown job backend 'slurm'"):
        jobs.choose_backend("slurm")
    monkeypatch.setenv("CXRDEMO_RAY_NUM_CPUS", "4")
    monkeypatch.setenv("CXRDEMO_RAY_NUM_GPUS", "0.5")
    assert ray_backend.requested_resources() == (4.0, 0.5)
    monkeypatch.setenv("CXRDEMO_RAY_NUM_GPUS", "one")
    with pytest.raises(ConfigError, match="CXRDEMO_RAY_NUM_GPUS='one' is not a number of GPUs"):
        ray_backend.requested_resources()
    monkeypatch.setenv("CXRDEMO_DEVICE", "cuda")
    monkeypatch.setenv("CXRDEMO_MAX_JOBS", "3")
    env = ray_backend.job_env(4.0)
    assert env["CXRDEMO_DEVICE"] == "cuda" and env["CXRDEMO_THREADS"] == "4"
    assert not {"CXRDEMO_MAX_JOBS", "CXRDEMO_RAY_ADDRESS", "CXRDEMO_RAY_NUM_GPUS"} & set(env)


def test_unreachable_cluster_is_one_sentence_and_creates_no_run(store, tiny_dataset, monkeypatch):
    address = f"127.0.0.1:{free_port()}"
    sentence = ray_backend.probe(address, timeout_s=2)
    assert sentence.startswith(f"The Ray cluster at {address} cannot be reached (")
    assert "this computer" in sentence and sentence.endswith(").") and ". " not in sentence and "\n" not in sentence
    assert ray_backend.probe("auto") is None  # nothing to probe: ray.init decides
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return  # joined already (another test file): submitting would use that cluster
    monkeypatch.setenv("CXRDEMO_RAY_ADDRESS", f"ray://{address}")
    with pytest.raises(ray_backend.RayUnavailable) as err:
        jobs.submit(tiny(tiny_dataset), store)
    assert "cannot be reached" in str(err.value) or "Ray is not installed" in str(err.value)
    assert not store.exists() or not list(store.iterdir())  # no run was created


def test_remote_worker_is_judged_by_heartbeat(store, tiny_dataset):
    d = runs.create_run(tiny(tiny_dataset), store)
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"]).pid
    os.waitpid(dead_pid, 0)
    fake_status(d, state="running", backend="ray", host="gpu-node-7", pid=dead_pid, heartbeat=time.time())
    assert runs.read_status(d)["state"] == "running"  # that pid lives (or not) on gpu-node-7, not here
    runs.write_status(d, heartbeat=time.time() - runs.HEARTBEAT_STALE_S - 5)
    assert runs.read_status(d)["state"] == "interrupted"
    runs.write_status(d, host=platform.node(), heartbeat=time.time())
    assert runs.read_status(d)["state"] == "interrupted"  # on this machine the pid check applies at once


def test_queued_ray_run_is_not_reaped_nor_blocks_the_local_queue(store, tiny_dataset):
    d = runs.create_run(tiny(tiny_dataset), store)
    runs.write_status(d, backend="ray", created=time.time() - 3600)  # waiting an hour for a free GPU
    assert jobs.reap(store) == [] and status(store, d.name)["state"] == "queued"
    assert slots.queue_order(store) == []


def test_trainer_offers_this_computer_when_the_cluster_is_unreachable(store, monkeypatch):
    from streamlit.testing.v1 import AppTest

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()  # a joined process would not look for the configured cluster
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("CXRDEMO_RAY_ADDRESS", address)
    monkeypatch.setenv("CXRDEMO_WEIGHTS_DIR", str(store.parent / "weights"))
    sent = []
    monkeypatch.setattr(jobs, "submit", lambda config, runs_dir=None, name="", max_jobs=None, backend=None, asker=None:
                        sent.append(backend) or runs.create_run(config, runs_dir, name=name).name)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app_pages" / "trainer.py"), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = [w.value for w in at.warning if "Ray" in w.value]
    assert len(warnings) == 1 and ("cannot be reached" in warnings[0] or "Ray is not installed" in warnings[0])
    radio = at.radio(key="backend")
    assert radio.value == "local" and radio.options == [f"the Ray cluster at {address}", "this computer"]
    at.button(key="start").click().run()
    assert not at.exception and sent == ["local"]
    radio.set_value("ray").run()  # AppTest replays the earlier click with this run: both go to the cluster
    at.button(key="start").click().run()
    assert sent[0] == "local" and sent[1:] and set(sent[1:]) == {"ray"}


# ---------------------------------------------------------------- a real local Ray head

@pytest.fixture(scope="module")
def ray_head():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e .[ray]): the Ray backend's "
                                            "cluster tests need a real local Ray head")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", namespace="cxrdemo",
                 log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def training(root: Path, run_id: str) -> dict | None:
    """The run's status once its worker is in the epoch loop (not still preparing), else None."""
    s = status(root, run_id)
    assert s["state"] in ("queued", "running"), s
    return s if s["state"] == "running" and s.get("pid") and s.get("phase") in ("train", "val") else None


@pytest.mark.slow
def test_two_jobs_complete_through_the_run_store(ray_head, store, tiny_dataset):
    ids = [jobs.submit(tiny(tiny_dataset), store, backend="ray", name=f"r{i}") for i in range(2)]
    for run_id in ids:
        wait_for(lambda: status(store, run_id)["state"] in runs.FINAL)
        s = status(store, run_id)
        assert s["state"] == "completed", s
        assert s["backend"] == "ray" and len(s["ray_task_id"]) >= 16 and s["ray_num_cpus"] == 1.0
        assert s["host"] == platform.node() and s["device"] == "cpu" and 0.0 <= s["test_accuracy"] <= 1.0
        assert runs.read_json(store / run_id / "config.json")["device"] == "cpu"
        assert len(runs.read_metrics_rows(store / run_id)) == 1
        assert (store / run_id / "model.pt").is_file() and runs.read_test_metrics(store / run_id)["split"] == "test"
        assert ray_backend.outcome(store / run_id) == {"known": True, "done": True, "state": "completed", "error": None}


@pytest.mark.slow
def test_cancel_queued_and_running_ray_jobs(ray_head, store, tiny_dataset, monkeypatch):
    monkeypatch.setenv("CXRDEMO_RAY_NUM_CPUS", "2")  # one job fills the head: the next one waits in Ray's queue
    long = tiny(tiny_dataset, epochs=400)
    first = jobs.submit(long, store, backend="ray", name="long")
    wait_for(lambda: training(store, first))
    second = jobs.submit(long, store, backend="ray", name="waiting")
    time.sleep(0.5)
    assert status(store, second)["state"] == "queued"
    assert jobs.cancel(second, store)["state"] == "cancelled"
    # The running one stops at the next batch through the cancel file; the Ray task then ends as 'cancelled'.
    assert jobs.cancel(first, store, grace_s=30)["state"] == "cancelled"
    wait_for(lambda: ray_backend.alive(store / first) is False, 20)
    assert ray_backend.outcome(store / first)["state"] == "cancelled"
    assert 1 <= len(runs.read_metrics_rows(store / first)) < 400
    time.sleep(1.0)  # the freed CPUs must not start the cancelled job
    s2 = status(store, second)
    assert s2["state"] == "cancelled" and not s2.get("started") and not s2.get("pid")


@pytest.mark.slow
def test_force_cancel_and_killed_worker(ray_head, store, tiny_dataset, monkeypatch):
    long = tiny(tiny_dataset, epochs=400)
    forced = jobs.submit(long, store, backend="ray", name="forced")
    killed = jobs.submit(long, store, backend="ray", name="killed")
    # A worker that does not stop within the grace period (here: never sees the cancel file) is stopped by
    # ray.cancel(ref, force=True), which kills its process; the run then reads 'cancelled', not 'interrupted'.
    f = wait_for(lambda: training(store, forced))
    monkeypatch.setattr(lifecycle, "CANCEL_FILE", "cancel-not-seen-by-the-worker")
    t0 = time.monotonic()
    assert jobs.cancel(forced, store, grace_s=0.5)["state"] == "cancelled"
    assert time.monotonic() - t0 < 15 and not runs.pid_alive(f["pid"])
    assert ray_backend.outcome(store / forced)["state"] == "cancelled"
    assert status(store, forced)["state"] == "cancelled"
    # SIGKILL of the Ray worker process: 'interrupted' at once (same host), reaped, and never retried by Ray.
    k = wait_for(lambda: training(store, killed))
    os.kill(int(k["pid"]), signal.SIGKILL)
    wait_for(lambda: status(store, killed)["state"] == "interrupted", 20)
    assert "stopped unexpectedly" in status(store, killed)["error"]
    assert jobs.reap(store) == [killed]
    wait_for(lambda: (ray_backend.outcome(store / killed) or {}).get("state") == "interrupted", 20)
    assert ray_backend.outcome(store / killed)["error"] == ray_backend.CRASHED
    time.sleep(1.0)
    again = runs.read_json(store / killed / "status.json")
    assert again["state"] == "interrupted" and again["pid"] == k["pid"]


def test_device_choice(monkeypatch):
    import torch

    from cxrdemo.model.device import choose_device

    monkeypatch.delenv("CXRDEMO_DEVICE", raising=False)
    assert choose_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("CXRDEMO_DEVICE", "cpu")
    assert choose_device() == torch.device("cpu")
    monkeypatch.setenv("CXRDEMO_DEVICE", "gpu please")
    with pytest.raises(ConfigError, match="is not a device: use cpu, cuda or cuda:N"):
        choose_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("CXRDEMO_DEVICE", "cuda")
        with pytest.raises(ConfigError, match="this machine has no usable CUDA GPU"):
            choose_device()
