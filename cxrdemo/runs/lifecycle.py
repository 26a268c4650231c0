"""The run lifecycle: the one writer of a run's state, its cancel request, and the reader that knows a dead worker.

    create -> queued --claim--> running --finish--> completed | failed | cancelled
              queued --cancel--> cancelled
    queued or running whose worker is gone: read as 'interrupted' at once, recorded by `settle` (jobs.reap)

Every transition happens under the run's lock (an flock the OS releases when its holder dies), so a state
is never decided on a stale read: two workers cannot both claim a run, a cancel cannot slip between a
check and a start. Torch-free: a waiting worker and `jobs list` import this.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import stat
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from cxrdemo import fileio
from cxrdemo.errors import RunError

ACTIVE = ("queued", "running")
FINAL = ("completed", "failed", "cancelled", "interrupted")
ENDINGS = ("completed", "failed", "cancelled")  # what a worker records; 'interrupted' is what others conclude
STATUS_FILE = "status.json"
CANCEL_FILE = "cancel"  # its existence is the request; the worker checks it between batches
LOG_FILE = "log.txt"
HEARTBEAT_STALE_S = 120.0
FINISHING = ("test", "done")  # phases after the last epoch: calibrating, testing, writing the model file
LOG_REPLACED = ("log.txt was a link (or not a plain file of this run's own) and was replaced by a new log; what it "
                "pointed to was not read or written.")
CANCELLED_LATE = ("Cancelled as it was finishing: its trained epochs and its model file are kept; the test results "
                  "written while it finished are not part of a completed run.")
INTERRUPTED = ("The training process stopped unexpectedly (killed or the machine restarted). Its last finished "
               "epoch is kept.")


@contextlib.contextmanager
def run_lock(d: Path) -> Iterator[None]:
    """An exclusive lock on one run's files (released by the OS if the holder dies)."""
    with fileio.open_append(Path(d) / ".lock") as f:  # never through a link: "a+" would create its target
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _merge(d: Path, **updates: Any) -> dict:
    # The caller holds the run lock. A damaged status.json is replaced rather than kept damaged.
    try:
        status = fileio.read_json(Path(d) / STATUS_FILE)
    except RunError:
        status = {}
    status.update(updates, updated=time.time())
    fileio.atomic_write_json(Path(d) / STATUS_FILE, status)
    return status


def _write(d: Path, **updates: Any) -> dict:
    with run_lock(d):
        return _merge(d, **updates)


def update(d: Path, **fields: Any) -> dict:
    """Merge progress and bookkeeping fields (epoch, heartbeat, pid, device, ...) into status.json; never the state."""
    if "state" in fields:
        raise ValueError("a run's state changes only through the lifecycle's transitions (claim, finish, ...)")
    return _write(d, **fields)


# ---------------------------------------------------------------- transitions

def create(d: Path) -> dict:
    """Record a new run folder as queued (its config.json is already written)."""
    return _write(d, state="queued", epoch=0, created=time.time())


def create_side_job(d: Path, **fields: Any) -> dict | None:
    """Record a side job's folder (`<run>/<kind>/`) as queued afresh; None while its previous job is still active.

    The check and the write happen under the folder's lock, so two clicks cannot queue the same job twice;
    `fields` (the browser that asked) are recorded with it.
    """
    with run_lock(d):
        if (Path(d) / STATUS_FILE).is_file():
            try:
                if read_status(d).get("state") in ACTIVE:
                    return None
            except RunError:
                pass  # a damaged status is replaced
        (Path(d) / CANCEL_FILE).unlink(missing_ok=True)  # the last job's request is not this one's
        fileio.atomic_write_json(Path(d) / STATUS_FILE, {**fields, "state": "queued", "epoch": 0,
                                                         "created": time.time(), "updated": time.time()})
        return fileio.read_json(Path(d) / STATUS_FILE)


def claim(d: Path, **fields: Any) -> dict | None:
    """Queued -> running for this process, under the run lock; None when the run is not queued (nothing to train).

    A run someone else claimed, finished or cancelled is refused, so two workers never train one run;
    a cancel requested while it waited is recorded here.
    """
    with run_lock(d):
        if not _waits(d):
            return None
        now = time.time()
        return _merge(d, **{"pid": os.getpid(), "started": now, "heartbeat": now, "epoch": 0, "error": None,
                            **fields, "state": "running"})


def still_queued(d: Path, beat: bool = False) -> bool:
    """For a waiting worker: whether its run still waits (recording a requested cancel); with beat, say it lives."""
    with run_lock(d):
        if not _waits(d):
            return False
        if beat:
            _merge(d, pid=os.getpid(), heartbeat=time.time())
        return True


def _waits(d: Path) -> bool:
    """Under the run lock: whether the run is still queued; a cancel requested while it waited is recorded here."""
    if fileio.read_json(Path(d) / STATUS_FILE).get("state") != "queued":
        return False
    if cancel_requested(d):
        (Path(d) / CANCEL_FILE).unlink(missing_ok=True)
        _merge(d, state="cancelled", finished=time.time(), error=None)
        return False
    return True


def finish(d: Path, state: str, error: str | None = None, **fields: Any) -> dict:
    """Record how the run ended: completed, failed (with its sentence) or cancelled; the cancel request is used up.

    A cancel asked for after the worker's last check (it was finishing) is honoured: 'cancelled', with a sentence,
    never a silent 'completed'.
    """
    if state not in ENDINGS:
        raise ValueError(f"a run cannot finish as {state!r}")
    with run_lock(d):
        if state == "completed" and cancel_requested(d):
            state, error = "cancelled", CANCELLED_LATE
        (Path(d) / CANCEL_FILE).unlink(missing_ok=True)
        return _merge(d, **{**fields, "state": state, "finished": time.time(), "error": error})


def settle(d: Path, judge: Callable[[dict], tuple[str, str | None] | None]) -> dict | None:
    """If the run is still active and `judge(status)` names how it ended (state, error), record that; else None.

    The judgement and the write happen under one lock: a worker cannot finish in between.
    """
    with run_lock(d):
        raw = fileio.read_json(Path(d) / STATUS_FILE)
        if raw.get("state") not in ACTIVE:
            return None
        verdict = judge(raw)
        if verdict is None:
            return None
        state, error = verdict
        if state not in FINAL:
            raise ValueError(f"a run cannot end as {state!r}")
        (Path(d) / CANCEL_FILE).unlink(missing_ok=True)
        return _merge(d, state=state, error=error, finished=time.time())


# ---------------------------------------------------------------- cancelling

def request_cancel(d: Path) -> tuple[str | None, dict]:
    """Ask an active run to stop: a queued one is cancelled at once, a running one finds the request between batches.

    Returns the state it was in and its status now; 'finishing' (nothing asked) for a running run past its last
    epoch (calibrating, testing): it ends by itself within seconds. Reading and asking happen under one lock: a
    worker records its own transitions under it, so it cannot start or finish between what is read and asked.
    """
    with run_lock(d):
        status = read_status(d)
        before = status.get("state")
        if before == "running" and status.get("phase") in FINISHING:
            return "finishing", status
        if before in ACTIVE:
            fileio.atomic_write_bytes(Path(d) / CANCEL_FILE, str(time.time()).encode())
        if before == "queued":
            status = _merge(d, state="cancelled", finished=time.time(), error=None)
    return before, status


def cancel_requested(d: Path) -> bool:
    """Whether a cancel was requested for this run."""
    return (Path(d) / CANCEL_FILE).exists()


# ---------------------------------------------------------------- reading

def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def worker_is_local(status: dict) -> bool:
    """Whether status.json's pid is a process on this machine (a Ray worker may run on another node)."""
    return status.get("backend") != "ray" or status.get("host") == platform.node()


def interpret(status: dict) -> dict:
    """The truth about a status as written: an active run whose worker is gone reads 'interrupted'."""
    if status.get("state") in ACTIVE:
        # Another node's pid means nothing here: such a worker is judged by its heartbeat alone.
        pid = status.get("pid") if worker_is_local(status) else None
        stale = time.time() - float(status.get("heartbeat") or status.get("updated") or 0) > HEARTBEAT_STALE_S
        if (pid and not pid_alive(pid)) or (status.get("state") == "running" and stale and not pid_alive(pid)):
            status = {**status, "state": "interrupted", "error": status.get("error") or INTERRUPTED}
    return status


def read_status(d: Path) -> dict:
    """status.json with the truth about dead workers (see `interpret`); RunError when it is damaged."""
    return interpret(fileio.read_json(Path(d) / STATUS_FILE))


LOG_TAIL_BYTES = 64 * 1024  # the end of a log that its last lines are read from


def open_log(d: Path) -> BinaryIO:
    """The run's (or side job's) log.txt, opened for appending and never through a link (fileio.open_append); a
    replaced one starts with LOG_REPLACED, said once."""
    return fileio.open_append(Path(d) / LOG_FILE, note=(LOG_REPLACED + "\n").encode())


def log_tail(d: Path, lines: int = 20) -> str:
    """The last lines of a run's log ('' when it has none). The log is the run folder's own file: a link (to a
    system file, say) is not followed, and anything but a regular file is not read; only its end is read."""
    try:
        fd = os.open(Path(d) / LOG_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # missing, or a link (ELOOP)
        return ""
    with os.fdopen(fd, "rb") as f:
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):  # a FIFO or a device: reading it could block or never end
                return ""
            f.seek(max(0, info.st_size - LOG_TAIL_BYTES))
            text = f.read(LOG_TAIL_BYTES).decode("utf-8", errors="replace")
        except OSError:
            return ""
    return "\n".join(text.splitlines()[-lines:])
