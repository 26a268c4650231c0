"""Background jobs: real detached worker processes on a tiny dataset (cnn8, 32 px), bounded waits everywhere."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from cxrdemo.cli import main as cli
from cxrdemo.errors import RunError
from cxrdemo.runs import jobs, slots
from cxrdemo.runs import store as runs
from cxrdemo.views import trainer as trainer_view
from tests.helpers import make_split_dataset, wait_for
from tests.helpers import tiny_config as tiny

TIMEOUT_S = 90.0
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_split_dataset(tmp_path_factory.mktemp("jobs_data"), (6, 3, 3), 64)


def state(root: Path, run_id: str) -> str:
    return runs.read_status(root / run_id)["state"]


def wait_final(root: Path, run_id: str) -> dict:
    wait_for(lambda: state(root, run_id) in runs.FINAL)
    return runs.read_status(root / run_id)


def reaped(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


# ---------------------------------------------------------------- the full life of jobs

@pytest.mark.slow
def test_queue_order_progress_failure_completion_no_zombies(store, data_dir, tmp_path):
    # Three submits from three threads at once (as from three browser tabs), one slot; the middle one fails
    # in its worker (a dataset with a single class is only found out when the worker scans it).
    one_class = tmp_path / "one_class"
    shutil.copytree(data_dir / "train" / "NORMAL", one_class / "train" / "NORMAL")
    configs = [tiny(data_dir, epochs=2), tiny(one_class), tiny(data_dir)]
    ids: list[str] = []
    threads = [threading.Thread(target=lambda c=c: ids.append(jobs.submit(c, store, max_jobs=1))) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(ids) == 3 and len(set(ids)) == 3
    order = [i.run_id for i in jobs.list_jobs(store)]
    assert sorted(order) == sorted(ids)
    by_data = {runs.read_json(store / i / "config.json")["config"]["data"]: i for i in order}

    failed = by_data.pop(str(one_class))
    # Progress becomes visible while the first job that trains runs: a running state, then a metrics row.
    first = next(i for i in order if i != failed)
    seen = set()
    def progressed():
        s = runs.read_status(store / first)
        seen.add(s["state"])
        return s["state"] in runs.FINAL or runs.read_metrics_rows(store / first)
    wait_for(progressed, step=0.05)
    assert "running" in seen

    statuses = {i: wait_final(store, i) for i in order}
    assert statuses[failed]["state"] == "failed"
    assert "only one class" in statuses[failed]["error"] and "Traceback" not in statuses[failed]["error"]
    row = trainer_view.job_row(runs.load_run(store / failed))
    assert row.error == statuses[failed]["error"] and not row.active and row.state == "failed"
    for i in order:
        if i != failed:
            assert statuses[i]["state"] == "completed", statuses[i].get("error")
            assert (store / i / "model.pt").is_file()
            assert len(runs.read_metrics(store / i)) == runs.read_json(store / i / "config.json")["config"]["epochs"]
    # Never two running at once, and started in creation order (a failure does not block the queue).
    spans = [(statuses[i]["started"], statuses[i]["finished"]) for i in order]
    for (_, prev_end), (start, _) in zip(spans, spans[1:]):
        assert start >= prev_end
    # No zombie children: every worker was waited for by this process.
    for i in order:
        pid = int(statuses[i]["pid"])
        wait_for(lambda pid=pid: reaped(pid), timeout=10)
    wait_for(lambda: jobs.poll_children() == 0, timeout=10)

    # The CLI reads the same store: exit 0 for a completed run, 2 for a failed one.
    assert cli.main(["jobs", "watch", first, "--every", "0.1", "--timeout", "5"]) == 0
    assert cli.main(["jobs", "watch", failed, "--timeout", "5"]) == 2


@pytest.mark.slow
def test_cancel_queued_then_running_keeps_partial_metrics(store, data_dir):
    long_id = jobs.submit(tiny(data_dir, epochs=500), store, max_jobs=1)
    next_id = jobs.submit(tiny(data_dir), store, max_jobs=1)
    last_id = jobs.submit(tiny(data_dir), store, max_jobs=1)
    wait_for(lambda: len(runs.read_metrics_rows(store / long_id)) >= 1)
    assert state(store, next_id) == state(store, last_id) == "queued"
    pids = [wait_for(lambda i=i: runs.read_json(store / i / "status.json").get("pid")) for i in (next_id, last_id)]
    # Waiting workers stay light: only the next in line loads torch before its turn.
    wait_for(lambda: "libtorch" in Path(f"/proc/{pids[0]}/maps").read_text(), timeout=30)
    assert "libtorch" not in Path(f"/proc/{pids[1]}/maps").read_text()

    for run_id, pid in zip((next_id, last_id), pids):
        t0 = time.monotonic()
        assert jobs.cancel(run_id, store)["state"] == "cancelled"
        assert time.monotonic() - t0 < 2
        wait_for(lambda pid=pid: reaped(pid), timeout=15)
        assert state(store, run_id) == "cancelled"
        assert not (store / run_id / "model.pt").exists()
    assert state(store, long_id) == "running"

    status = jobs.cancel(long_id, store, grace_s=20)
    assert status["state"] == "cancelled"
    rows = runs.read_metrics(store / long_id)
    assert 1 <= len(rows) < 500
    assert (store / long_id / "model.pt").is_file()  # the best finished epoch is kept
    wait_for(lambda: reaped(int(status["pid"])), timeout=10)
    with pytest.raises(RunError, match="nothing to cancel"):
        jobs.cancel(long_id, store)


@pytest.mark.slow
def test_sigkilled_worker_reads_interrupted_and_is_reaped(store, data_dir):
    run_id = jobs.submit(tiny(data_dir, epochs=500), store, max_jobs=1)
    wait_for(lambda: len(runs.read_metrics_rows(store / run_id)) >= 1)
    pid = int(runs.read_status(store / run_id)["pid"])
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: reaped(pid), timeout=10)
    assert runs.read_json(store / run_id / "status.json")["state"] == "running"  # nobody wrote it yet
    assert state(store, run_id) == "interrupted"
    assert jobs.reap(store) == [run_id]
    raw = runs.read_json(store / run_id / "status.json")
    assert raw["state"] == "interrupted" and "stopped unexpectedly" in raw["error"]
    assert jobs.reap(store) == []
    assert len(runs.read_metrics(store / run_id)) >= 1
    # Starting it again makes a new run with the same recipe.
    again = jobs.resubmit(run_id, store, max_jobs=1)
    assert again != run_id
    assert runs.read_json(store / again / "config.json")["config"]["epochs"] == 500
    jobs.cancel(again, store, grace_s=5)


# ---------------------------------------------------------------- no processes needed

def test_abandoned_queued_runs_are_reaped_and_do_not_block(store, data_dir):
    never = runs.create_run(tiny(data_dir), store)
    frozen = runs.create_run(tiny(data_dir), store)
    waiting = runs.create_run(tiny(data_dir), store)
    runs.write_status(frozen, pid=os.getpid(), heartbeat=time.time())
    runs.write_status(waiting, pid=os.getpid(), heartbeat=time.time())
    assert slots.queue_order(store) == [never.name, frozen.name, waiting.name]
    runs.write_status(never, created=time.time() - slots.UNSTARTED_GRACE_S - 5)  # the app died before Popen
    runs.write_status(frozen, heartbeat=time.time() - runs.HEARTBEAT_STALE_S - 5)  # a pid recycled after a reboot
    assert slots.queue_order(store) == [waiting.name]  # leftovers do not hold the queue
    assert jobs.reap(store) == [never.name, frozen.name]
    for d in (never, frozen):
        raw = runs.read_json(d / "status.json")
        assert raw["state"] == "interrupted" and raw["error"] == jobs.NEVER_STARTED
    assert runs.read_status(waiting)["state"] == "queued"


def test_cancel_file_is_named_once():
    # The request is written and read through the lifecycle only: no second spelling of the file name can drift.
    spelled = [p.name for p in (REPO / "cxrdemo").rglob("*.py")
               if 'CANCEL_FILE = ' in p.read_text() or '/ "cancel"' in p.read_text()]
    assert spelled == ["lifecycle.py"]


def test_slots_limit_concurrency(store):
    store.mkdir(parents=True)
    a = slots._try_slot(store, 2)
    b = slots._try_slot(store, 2)
    assert a is not None and b is not None and slots._try_slot(store, 2) is None
    a.close()  # released like a dead process's lock
    c = slots._try_slot(store, 2)
    assert c is not None
    b.close()
    c.close()


def test_default_max_jobs_from_env(monkeypatch):
    monkeypatch.setenv("CXRDEMO_MAX_JOBS", "3")
    assert slots.default_max_jobs() == 3
    monkeypatch.setenv("CXRDEMO_MAX_JOBS", "zero")
    assert slots.default_max_jobs() >= 1


def test_cli_bad_input_exits_2(store, capsys):
    assert cli.main(["jobs", "cancel", "../etc"]) == 2
    assert "not a valid run id" in capsys.readouterr().err
    assert cli.main(["jobs", "watch", "no-such-run"]) == 2
    assert "No run 'no-such-run'" in capsys.readouterr().err
    assert cli.main(["jobs", "submit", "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert "Epochs must be at least 1" in err and err.count("\n") == 1
    assert cli.main(["jobs", "list"]) == 0
    assert "No runs" in capsys.readouterr().out
