"""Train one claimed run on its run directory: the only input a worker needs (local process, or a Ray task)."""

from __future__ import annotations

import io
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Callable

from cxrdemo.config import TrainConfig
from cxrdemo.data.scan import dataset_name
from cxrdemo.errors import Cancelled, CxrError
from cxrdemo.model.train import Progress, fit
from cxrdemo.runs import lifecycle
from cxrdemo.runs import store as runs
from cxrdemo.runs.sources import load_source

HEARTBEAT_EVERY_S = 1.0


class _LogHandler(logging.FileHandler):
    """The run's log.txt as a logging handler, opened by the lifecycle: never appended to through a link."""

    def _open(self) -> io.TextIOWrapper:
        return io.TextIOWrapper(lifecycle.open_log(Path(self.baseFilename).parent), encoding="utf-8",
                                write_through=True)


def _logger(run_dir: Path) -> logging.Logger:
    log = logging.getLogger(f"cxrdemo.run.{run_dir.name}")
    log.setLevel(logging.INFO)
    log.propagate = False
    # A process can train several runs (tests, a Ray worker): the same id in another store gets its own file.
    _close(log)
    handler = _LogHandler(run_dir / lifecycle.LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    return log


def _write_error(exc: OSError) -> str:
    return f"Could not write the run's files ({exc.strerror or exc}): is the disk full or the folder read-only?"


def _close(log: logging.Logger) -> None:
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


def execute_run(run_dir: Path, echo: Callable[[Progress], None] | None = None,
                runs_dir: Path | None = None, **claim_fields) -> dict:
    """Claim the queued run in `run_dir` and train it, keeping status.json truthful whatever happens.

    Returns its final status; a run that is not queued (another worker has it, it ended or was cancelled)
    is left alone and its status returned with `claimed: False`. `claim_fields` go into status.json with
    the claim (a Ray task records its host and task id).
    """
    run_dir = Path(run_dir)
    started = time.time()
    try:
        recorded = runs.read_json(run_dir / "config.json")
        config = TrainConfig.from_dict(recorded["config"])
        roots = recorded.get("data_roots")  # a classroom's allowed folders: the scan follows no link out of them
        if lifecycle.claim(run_dir, **claim_fields) is None:
            return {**lifecycle.read_status(run_dir), "claimed": False}
        with lifecycle.run_lock(run_dir):  # ours now: any other writer of this run is dead
            for stale in run_dir.glob(".*.tmp"):  # a write cut short by a kill: never read, so tidy it once it is old
                if time.time() - stale.stat().st_mtime > 30:
                    stale.unlink(missing_ok=True)
        log = _logger(run_dir)
        runs.record_versions(run_dir)
    except OSError as exc:
        # The folder cannot even be written: report it to the caller; status.json reads 'interrupted' once we exit.
        return {"state": "failed", "error": _write_error(exc)}
    # The log names the dataset, not its folder: config.json alone holds the path (issue 17).
    log.info("started pid %s: %s", os.getpid(), {**config.to_dict(), "data": dataset_name(config.data)})
    last_beat = [0.0]

    def on_progress(p: Progress) -> None:
        now = time.time()
        if p.meta:  # how the run trains (dataset, device, precision...): config.json keeps it
            runs.atomic_write_json(run_dir / "config.json", {**runs.read_json(run_dir / "config.json"), **p.meta})
        if p.row:
            runs.append_metrics(run_dir, p.row)
        if p.message:
            log.info("epoch %s/%s %s", p.epoch, p.epochs, p.message)
        if p.row or p.phase != "train" or now - last_beat[0] >= HEARTBEAT_EVERY_S:
            last_beat[0] = now
            fields = dict(heartbeat=now, phase=p.phase, epoch=p.epoch, epochs=p.epochs, batch=p.batch,
                          batches=p.batches, message=p.message or None)
            if "device" in p.meta:
                fields["device"] = p.meta["device"]
            if p.row:
                fields["last_row"] = p.row
                log.info("epoch %s: %s", p.epoch, {k: p.row[k] for k in ("train_loss", "val_loss", "val_acc")})
            runs.write_status(run_dir, **fields)
        if echo:
            echo(p)

    try:
        try:
            result = fit(config, run_dir, on_progress, lambda: lifecycle.cancel_requested(run_dir),
                         load_source(config, runs_dir), roots=roots)
        except Cancelled:
            log.info("cancelled")
            return lifecycle.finish(run_dir, "cancelled")
        except CxrError as exc:
            log.info("failed: %s", exc)
            return lifecycle.finish(run_dir, "failed", str(exc), log_tail=lifecycle.log_tail(run_dir))
        except MemoryError:
            log.info("failed: out of memory")
            return lifecycle.finish(run_dir, "failed", "The machine ran out of memory: try a smaller batch size or "
                                    "image size.", log_tail=lifecycle.log_tail(run_dir))
        except OSError as exc:
            # Disk full, read-only folder: say so plainly; earlier runs are untouched because every write is atomic.
            log.info("failed: %s", exc)
            msg = _write_error(exc)
            try:
                return lifecycle.finish(run_dir, "failed", msg, log_tail=lifecycle.log_tail(run_dir))
            except OSError:
                return {"state": "failed", "error": msg}
        except Exception as exc:  # noqa: BLE001 - the worker must record any crash truthfully, then stop
            log.info("crashed:\n%s", traceback.format_exc())
            return lifecycle.finish(run_dir, "failed", f"Training crashed: {exc.__class__.__name__}: {exc}",
                                    log_tail=lifecycle.log_tail(run_dir))
        log.info("completed in %.1f s", time.time() - started)
        return lifecycle.finish(run_dir, "completed", test_accuracy=result.get("accuracy"))
    finally:
        _close(log)  # a long-lived process (a Ray worker, the tests) must not keep one open file per run
