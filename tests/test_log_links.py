"""A run's log is its own file (issue 30 audit): log.txt linked to a system file, a FIFO or a huge file is never
shown or read whole in the Trainer's Log expander."""

from __future__ import annotations

import os
import threading

import pytest

from cxrdemo.errors import RunError
from cxrdemo.runs import lifecycle


def test_a_log_linked_out_of_the_run_folder_is_not_followed(tmp_path):
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:SECRET\n")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(secret, run / lifecycle.LOG_FILE)
    assert lifecycle.log_tail(run) == ""
    os.unlink(run / lifecycle.LOG_FILE)
    os.symlink(run / "elsewhere.txt", run / lifecycle.LOG_FILE)  # even a link inside the folder: not the log
    (run / "elsewhere.txt").write_text("x\n")
    assert lifecycle.log_tail(run) == ""


def test_a_fifo_log_does_not_block_and_a_huge_one_is_read_from_its_end(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / lifecycle.LOG_FILE)
    result = []
    t = threading.Thread(target=lambda: result.append(lifecycle.log_tail(run)), daemon=True)
    t.start()
    t.join(5)
    assert result == [""]
    os.unlink(run / lifecycle.LOG_FILE)
    with open(run / lifecycle.LOG_FILE, "w") as f:
        f.write("old line\n" * 2_000_000)  # 18 MB
        f.write("".join(f"line {i}\n" for i in range(30)))
    assert lifecycle.log_tail(run, 3) == "line 27\nline 28\nline 29"


def _link_out(tmp_path, name: str = lifecycle.LOG_FILE):
    """A run folder whose `name` is a link to a file elsewhere (made by someone who may write in the store)."""
    tmp_path.mkdir(exist_ok=True)
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not the run's\n")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(elsewhere, run / name)
    return run, elsewhere


def test_the_run_log_writer_replaces_a_link_and_leaves_its_target_alone(tmp_path):
    run, elsewhere = _link_out(tmp_path)
    with lifecycle.open_log(run) as log:
        log.write(b"epoch 1\n")
    assert elsewhere.read_text() == "not the run's\n"
    assert not (run / lifecycle.LOG_FILE).is_symlink()
    text = (run / lifecycle.LOG_FILE).read_text()
    assert text == lifecycle.LOG_REPLACED + "\nepoch 1\n"
    with lifecycle.open_log(run) as log:  # a file of its own now: appended to, the note said once
        log.write(b"epoch 2\n")
    assert (run / lifecycle.LOG_FILE).read_text() == text + "epoch 2\n"


def test_a_fifo_or_hard_linked_log_is_replaced_without_blocking(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / lifecycle.LOG_FILE)
    done = []
    t = threading.Thread(target=lambda: done.append(lifecycle.open_log(run).close()), daemon=True)
    t.start()
    t.join(5)
    assert done == [None] and (run / lifecycle.LOG_FILE).is_file()
    other = tmp_path / "shared.txt"
    other.write_text("shared\n")
    os.unlink(run / lifecycle.LOG_FILE)
    os.link(other, run / lifecycle.LOG_FILE)
    with lifecycle.open_log(run) as log:
        log.write(b"x\n")
    assert other.read_text() == "shared\n"


def test_the_worker_and_the_job_launcher_never_append_through_a_link(tmp_path, monkeypatch):
    import subprocess

    from cxrdemo.runs import jobs, worker

    run, elsewhere = _link_out(tmp_path)
    log = worker._logger(run)
    log.info("started")
    worker._close(log)
    assert elsewhere.read_text() == "not the run's\n"
    assert (run / lifecycle.LOG_FILE).read_text().endswith("started\n")

    run2, elsewhere2 = _link_out(tmp_path / "b")

    def popen(*args, stdout, **kwargs):  # the child's output goes where the launcher opened log.txt
        stdout.write(b"child\n")
        raise OSError(1, "not started in this test")

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(lifecycle, "finish", lambda *a, **k: None)
    with pytest.raises(RunError):
        jobs._spawn(run2, tmp_path / "b", 1)
    assert elsewhere2.read_text() == "not the run's\n" and "child" in (run2 / lifecycle.LOG_FILE).read_text()


def test_the_run_lock_never_creates_a_file_through_a_link(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    target = tmp_path / "made-elsewhere"
    os.symlink(target, run / ".lock")  # a dangling link: "a+" would create its target
    with lifecycle.run_lock(run):
        pass
    assert not target.exists() and not (run / ".lock").is_symlink()


def test_a_side_job_and_the_probes_never_write_through_a_linked_folder(tmp_path, run_store, monkeypatch):
    from cxrdemo import fileio
    from cxrdemo.config import TrainConfig
    from cxrdemo.runs import jobs, policy
    from cxrdemo.runs import store as runs

    run = runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=1, img_size=32), run_store)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, run / "scorecard")
    monkeypatch.setattr(jobs, "_spawn", lambda d, root, max_jobs, what: None)
    d = jobs.submit_side_job(run, "scorecard", {"data": "demo"}, "heatmap scorecard", asker=policy.DESKTOP)
    assert list(elsewhere.iterdir()) == [] and not d.is_symlink() and (d / "job.json").is_file()
    os.symlink(elsewhere, run / "probes")  # what model/probes writes its panel into
    assert fileio.own_folder(run / "probes").is_dir() and not (run / "probes").is_symlink()
    assert list(elsewhere.iterdir()) == []
