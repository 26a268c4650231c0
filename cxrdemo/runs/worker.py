"""Run one training job on its run directory: the only input a worker needs (local process, or a cluster)."""

from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path
from typing import Callable

from cxrdemo.runs import store as runs
from cxrdemo.config import TrainConfig
from cxrdemo.errors import Cancelled, CxrError
from cxrdemo.model.train import Progress, fit

CANCEL_FILE = "cancel"
HEARTBEAT_EVERY_S = 1.0


def request_cancel(run_dir: Path) -> None:
    """Ask the worker of `run_dir` to stop at the next batch."""
    runs.atomic_write_bytes(Path(run_dir) / CANCEL_FILE, str(time.time()).encode())


def cancel_requested(run_dir: Path) -> bool:
    """Whether a cancel was requested for this run."""
    return (Path(run_dir) / CANCEL_FILE).exists()


def _logger(run_dir: Path) -> logging.Logger:
    log = logging.getLogger(f"cxrdemo.run.{run_dir.name}")
    log.setLevel(logging.INFO)
    log.propagate = False
    # A process can train several runs (tests, a Ray worker): the same id in another store gets its own file.
    _close(log)
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    return log


def log_tail(run_dir: Path, lines: int = 20) -> str:
    """The last lines of a run's log."""
    try:
        return "\n".join((Path(run_dir) / "log.txt").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _write_error(exc: OSError) -> str:
    return f"Could not write the run's files ({exc.strerror or exc}): is the disk full or the folder read-only?"


def _close(log: logging.Logger) -> None:
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


def execute_run(run_dir: Path, echo: Callable[[Progress], None] | None = None,
                runs_dir: Path | None = None) -> dict:
    """Train the run in `run_dir`, keeping status.json truthful whatever happens; returns its final status."""
    run_dir = Path(run_dir)
    with runs.run_lock(run_dir):  # status writers hold this lock; other writers of this run are dead or are us
        for stale in run_dir.glob(".*.tmp"):  # a write cut short by a kill: never read, so tidy it once it is old
            if time.time() - stale.stat().st_mtime > 30:
                stale.unlink(missing_ok=True)
    started = time.time()
    try:
        log = _logger(run_dir)
        meta = runs.read_json(run_dir / "config.json")
        config = TrainConfig.from_dict(meta["config"])
        runs.write_status(run_dir, state="running", pid=os.getpid(), started=started, heartbeat=started, epoch=0,
                          error=None)
    except OSError as exc:
        # The folder cannot even be written: report it to the caller; status.json reads 'interrupted' once we exit.
        return {"state": "failed", "error": _write_error(exc)}
    log.info("started pid %s: %s", os.getpid(), config.to_dict())
    last_beat = [0.0]

    def on_progress(p: Progress) -> None:
        now = time.time()
        if p.message:
            log.info("epoch %s/%s %s", p.epoch, p.epochs, p.message)
        if p.row or p.phase != "train" or now - last_beat[0] >= HEARTBEAT_EVERY_S:
            last_beat[0] = now
            fields = dict(heartbeat=now, phase=p.phase, epoch=p.epoch, epochs=p.epochs, batch=p.batch,
                          batches=p.batches, message=p.message or None)
            if p.row:
                fields["last_row"] = p.row
                log.info("epoch %s: %s", p.epoch, {k: p.row[k] for k in ("train_loss", "val_loss", "val_acc")})
            runs.write_status(run_dir, **fields)
        if echo:
            echo(p)

    try:
        try:
            result = fit(config, run_dir, on_progress, lambda: cancel_requested(run_dir), runs_dir)
        except Cancelled:
            log.info("cancelled")
            return runs.write_status(run_dir, state="cancelled", finished=time.time(), error=None)
        except CxrError as exc:
            log.info("failed: %s", exc)
            return runs.write_status(run_dir, state="failed", finished=time.time(), error=str(exc),
                                     log_tail=log_tail(run_dir))
        except MemoryError:
            log.info("failed: out of memory")
            return runs.write_status(run_dir, state="failed", finished=time.time(), log_tail=log_tail(run_dir),
                                     error="The machine ran out of memory: try a smaller batch size or image size.")
        except OSError as exc:
            # Disk full, read-only folder: say so plainly; earlier runs are untouched because every write is atomic.
            log.info("failed: %s", exc)
            msg = _write_error(exc)
            try:
                return runs.write_status(run_dir, state="failed", finished=time.time(), error=msg,
                                         log_tail=log_tail(run_dir))
            except OSError:
                return {"state": "failed", "error": msg}
        except Exception as exc:  # noqa: BLE001 - the worker must record any crash truthfully, then stop
            log.info("crashed:\n%s", traceback.format_exc())
            return runs.write_status(run_dir, state="failed", finished=time.time(), log_tail=log_tail(run_dir),
                                     error=f"Training crashed: {exc.__class__.__name__}: {exc}")
        log.info("completed in %.1f s", time.time() - started)
        return runs.write_status(run_dir, state="completed", finished=time.time(), error=None,
                                 test_accuracy=result.get("accuracy"))
    finally:
        _close(log)  # a long-lived process (a Ray worker, the tests) must not keep one open file per run
