"""A run's log is its own file (issue 30 audit): log.txt linked to a system file, a FIFO or a huge file is never
shown or read whole in the Trainer's Log expander."""

from __future__ import annotations

import os
import threading

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
