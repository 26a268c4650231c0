"""Cancel means cancelled (issue 30): a cancel while a run calibrates and tests is refused with a sentence, a cancel
that arrives after the worker's last check ends it 'cancelled' with a sentence, and no `cancel` file is left."""

from __future__ import annotations

import os
import time

import pytest

from cxrdemo.config import TrainConfig
from cxrdemo.errors import RunError
from cxrdemo.runs import jobs, lifecycle
from cxrdemo.runs import store as runs
from tests.helpers import fake_status


def _running(store, phase: str):
    d = runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=2, img_size=32), store)
    fake_status(d, state="running", phase=phase, pid=os.getpid(), heartbeat=time.time())
    return d


@pytest.mark.parametrize("phase", lifecycle.FINISHING)
def test_a_cancel_while_finishing_is_refused_with_a_sentence(store, phase):
    d = _running(store, phase)
    with pytest.raises(RunError, match="being calibrated and tested: it ends by itself"):
        jobs.cancel(d.name, store, grace_s=0.1)
    assert not lifecycle.cancel_requested(d) and lifecycle.read_status(d)["state"] == "running"
    assert lifecycle.finish(d, "completed")["state"] == "completed"  # and it completes as usual


def test_a_late_cancel_is_never_a_silent_completed(store):
    d = _running(store, "val")  # the request is written while it trains ...
    lifecycle.request_cancel(d)
    assert lifecycle.cancel_requested(d)
    status = lifecycle.finish(d, "completed")  # ... and the worker had already passed its last check
    assert status["state"] == "cancelled" and status["error"] == lifecycle.CANCELLED_LATE
    assert not (d / lifecycle.CANCEL_FILE).exists()


@pytest.mark.parametrize("ending", ["cancelled", "failed"])
def test_no_cancel_file_outlives_the_run(store, ending):
    d = _running(store, "train")
    lifecycle.request_cancel(d)
    lifecycle.finish(d, ending, None if ending == "cancelled" else "stopped")
    assert not (d / lifecycle.CANCEL_FILE).exists()
    q = runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=2, img_size=32), store)
    (q / lifecycle.CANCEL_FILE).write_text("1")
    assert not lifecycle.still_queued(q) and not (q / lifecycle.CANCEL_FILE).exists()
    assert lifecycle.read_status(q)["state"] == "cancelled"
