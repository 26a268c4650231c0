"""The run lifecycle: one owner of a run's state, claims that exclude each other, a torch-free job side, cheap waiting."""

from __future__ import annotations

import ast
import builtins
import os
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from cxrdemo.cli import main as cli
from cxrdemo.config import TrainConfig
from cxrdemo.errors import RunError
from cxrdemo.runs import jobs, lifecycle, slots
from cxrdemo.runs import store as runs
from tests.helpers import make_split_dataset, tiny_config, torch_modules, wait_for

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_split_dataset(tmp_path_factory.mktemp("lifecycle_data"), (6, 3, 3), 64)


tiny = partial(tiny_config, threads=1)


# ---------------------------------------------------------------- one writer of `state`

def _state_writes(path: Path) -> list[int]:
    """Lines of `path` that set a run state: a call with state=... (status writes merge keywords) or x["state"] = ...

    Dicts with a "state" key that a function returns (a worker's outcome for its caller) are not writes.
    """
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and any(k.arg == "state" for k in node.keywords):
            lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            for target in getattr(node, "targets", [getattr(node, "target", None)]):
                if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant) \
                        and target.slice.value == "state":
                    lines.append(node.lineno)
    return lines


@pytest.mark.slow
def test_only_the_lifecycle_writes_a_run_state():
    sources = [*(REPO / "cxrdemo").rglob("*.py"), *(REPO / "app_pages").glob("*.py"), REPO / "app.py"]
    writers = {str(p.relative_to(REPO)): w for p in sources if (w := _state_writes(p))}
    assert "cxrdemo/runs/lifecycle.py" in writers  # the check sees the writes it is looking for
    assert list(writers) == ["cxrdemo/runs/lifecycle.py"], writers


def test_update_refuses_a_state(store):
    d = runs.create_run(TrainConfig())
    with pytest.raises(ValueError, match="transitions"):
        runs.write_status(d, state="completed")
    assert runs.read_status(d)["state"] == "queued"


# ---------------------------------------------------------------- claims

def test_a_run_is_claimed_once(store):
    d = runs.create_run(TrainConfig())
    results: list = []
    barrier = threading.Barrier(6)

    def claim():
        barrier.wait()
        results.append(lifecycle.claim(d))
    threads = [threading.Thread(target=claim) for _ in range(6)]
    [t.start() for t in threads]
    [t.join(10) for t in threads]
    assert sum(r is not None for r in results) == 1
    assert runs.read_status(d)["state"] == "running"
    lifecycle.finish(d, "completed")
    assert lifecycle.claim(d) is None and runs.read_status(d)["state"] == "completed"


def test_a_cancel_requested_while_queued_is_recorded_by_the_claim(store):
    d = runs.create_run(TrainConfig())
    (d / lifecycle.CANCEL_FILE).write_text("now")  # as left by a cancel whose status write was lost
    assert lifecycle.claim(d) is None
    assert runs.read_status(d)["state"] == "cancelled"


def test_settle_records_only_while_active(store):
    d = runs.create_run(TrainConfig())
    assert lifecycle.settle(d, lambda raw: None) is None and runs.read_status(d)["state"] == "queued"
    assert lifecycle.settle(d, lambda raw: ("interrupted", "gone"))["state"] == "interrupted"
    assert lifecycle.settle(d, lambda raw: ("cancelled", None)) is None  # already final: left as it is
    assert runs.read_status(d)["error"] == "gone"


@pytest.mark.slow
def test_two_workers_on_one_run_train_it_once(store, data_dir):
    d = runs.create_run(tiny(data_dir, epochs=2), store)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CXRDEMO_MAX_JOBS": "2"}  # two slots: only the claim decides
    procs = [subprocess.Popen([sys.executable, "-m", "cxrdemo", "worker", "--run-dir", str(d)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    assert any("not queued: this worker leaves it alone" in err for _, err in outs)
    log = (d / "log.txt").read_text()
    assert log.count("started pid") == 1, log
    assert runs.read_status(d)["state"] == "completed"
    assert list(runs.read_metrics(d)["epoch"]) == [1, 2]
    assert "torch" in runs.read_json(d / "config.json")["versions"]


# ---------------------------------------------------------------- the job side is torch-free

JOB_SIDE = """
from cxrdemo.cli import jobs as cli_jobs, main
from cxrdemo.config import TrainConfig
from cxrdemo.runs import jobs, lifecycle, slots, store
assert main.main(["jobs", "list"]) == 0  # an empty store
d = store.create_run(TrainConfig())
assert main.main(["jobs", "list"]) == 0 and main.main(["jobs", "reap"]) == 0
assert lifecycle.request_cancel(d)[1]["state"] == "cancelled"
assert main.main(["jobs", "list"]) == 0
"""


def test_the_job_side_does_not_import_torch(tmp_path):
    found = torch_modules(JOB_SIDE, env={"CXRDEMO_RUNS_DIR": str(tmp_path / "runs")})
    assert found == []


@pytest.mark.slow
def test_the_torch_check_catches_a_planted_import(tmp_path):
    # A function-level import moved to the top of a job-side module: the same check must notice.
    (tmp_path / "planted_jobs.py").write_text("from cxrdemo.runs import jobs\nfrom cxrdemo.runs.worker import execute_run\n")
    assert "torch" in torch_modules("import planted_jobs", pythonpath=(tmp_path,))


# ---------------------------------------------------------------- the queue

def test_a_full_queue_is_a_sentence(store, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("CXRDEMO_MAX_QUEUED", "2")
    for _ in range(2):
        runs.create_run(tiny(data_dir), store)
    with pytest.raises(RunError, match="queue is full: 2 job.s. are waiting and at most 2 may wait"):
        jobs.submit(tiny(data_dir), store)
    assert cli.main(["jobs", "submit", "--data", str(data_dir), "--backbone", "cnn8", "--img-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "The job queue is full" in err and "CXRDEMO_MAX_QUEUED" in err and err.count("\n") == 1
    assert len(runs.list_runs(store)) == 2  # nothing was created


@pytest.mark.slow
def test_waiting_workers_do_not_read_the_store(store, monkeypatch):
    """Only the head of the queue looks at the queue, once; the others read nothing while they wait."""
    first, second = runs.create_run(TrainConfig(), store), runs.create_run(TrainConfig(), store)
    busy = slots._try_slot(store, 1)  # the one slot is taken by a job that trains for a long time
    reads: list[tuple[str, str]] = []
    real_open = builtins.open

    def counting_open(file, *a, **kw):
        if Path(str(file)).name in ("status.json", "config.json"):
            reads.append((threading.current_thread().name, str(file)))
        return real_open(file, *a, **kw)
    monkeypatch.setattr(builtins, "open", counting_open)
    results: dict = {}

    def wait(d: Path) -> None:
        results[d.name] = slots.wait_for_slot(d, max_jobs=1)
    head = threading.Thread(target=wait, args=(first,), name="head")
    head.start()
    def head_lock_taken() -> bool:
        probe = slots._try_lock(store / slots.SLOTS_DIR / slots.HEAD_LOCK)
        return probe is None or bool(probe.close())
    wait_for(head_lock_taken, timeout=30)  # the first waiter leads
    other = threading.Thread(target=wait, args=(second,), name="other")
    other.start()
    time.sleep(1.0)  # the other waiter has said it is alive and found the head lock taken
    reads.clear()
    time.sleep(4.0)
    assert reads == []  # the old loop read every run's files twice a second: ~30 reads here
    for d in (second, first):
        assert jobs.cancel(d.name, store)["state"] == "cancelled"
    head.join(10)
    other.join(10)
    assert not head.is_alive() and not other.is_alive() and results == {first.name: None, second.name: None}
    busy.close()
