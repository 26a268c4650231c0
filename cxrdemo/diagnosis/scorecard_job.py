"""The CAM scorecard as a job: queued, run, cancelled and followed like training, in `<run>/scorecard/`.

The job machinery is the training one (runs.jobs.submit_side_job, runs.slots queue, runs.lifecycle states): the
folder `<run>/scorecard/` holds the job's own status.json, cancel file and log, so the run's status stays as it is.
The table itself is written to `<run>/cam_scorecard.json` (scorecard.write_scorecard) when the job completes.
"""

from __future__ import annotations

import random
import time
import traceback
from pathlib import Path
from typing import Callable

from cxrdemo.diagnosis import explain, scorecard
from cxrdemo.diagnosis.predict import load_model
from cxrdemo.errors import Cancelled, ConfigError, CxrError, DatasetError, RunError
from cxrdemo.model import checkpoint
from cxrdemo.runs import jobs, lifecycle, policy
from cxrdemo.runs import store as runs

KIND = "scorecard"
WHAT = "CAM scorecard"
DEFAULT_N = 20  # about 3 minutes for the demo model on 2 cores (docs/cam_measurements.md)


def job_dir(run_dir: str | Path) -> Path:
    """The scorecard job's folder of a run."""
    return Path(run_dir) / KIND


def params_for(n: int = DEFAULT_N, data: str = "", split: str = "test", methods: list[str] | None = None,
               seed: int = 0) -> dict:
    """Checked job parameters: ConfigError with a sentence before anything is queued."""
    if int(n) < 1:
        raise ConfigError(f"The scorecard needs at least 1 image per method (got {n}).")
    for m in methods or []:
        explain.method_class(m)  # an unknown name is reported before any job starts
    return {"n": int(n), "data": str(data), "split": split, "methods": list(methods) if methods else None,
            "seed": int(seed)}


def submit(run_id: str, runs_dir: str | Path | None = None, max_jobs: int | None = None,
           asker: policy.Asker | None = None, **params) -> Path:
    """Queue the scorecard of a completed run of the store (the same queue and classroom policy as training);
    returns the job folder."""
    d = runs.run_dir(run_id, runs_dir)
    info = runs.load_run(d)
    if info.damaged or info.state != "completed" or not checkpoint.has_model(d):
        raise RunError(f"Run {run_id} has no finished model ({info.damaged or info.state}): the scorecard scores a "
                       "completed run.")
    p = params_for(**params)
    if not p["data"]:
        p["data"] = str(info.config.get("data") or "")  # the run's own dataset: its test split was never trained on
    return jobs.submit_side_job(d, KIND, p, WHAT, max_jobs, asker)


def status(run_dir: str | Path) -> dict | None:
    """The scorecard job's status (dead workers read 'interrupted'), or None when none was ever started."""
    d = job_dir(run_dir)
    if not (d / lifecycle.STATUS_FILE).is_file():
        return None
    return lifecycle.read_status(d)


def cancel(run_dir: str | Path, grace_s: float = 10.0) -> dict:
    """Cancel the run's queued or running scorecard job; returns its status."""
    return jobs.cancel_dir(job_dir(run_dir), grace_s)


def compute(run_dir: str | Path, params: dict, progress: scorecard.Progress | None = None,
            should_stop: Callable[[], bool] | None = None, roots: list[str] | None = None) -> dict:
    """Pick N images of the split (seeded), score every method on them; the table (not written). `roots`: the
    classroom's allowed folders the job recorded (None: data.scan_dataset's own rule)."""
    from cxrdemo import data

    model = load_model(str(run_dir), allow_path=True)
    scan = data.scan_dataset(params["data"], require_train=False, roots=roots)
    if tuple(scan.classes) != tuple(model.classes):
        raise DatasetError(f"The dataset's classes {list(scan.classes)} differ from the model's "
                           f"{list(model.classes)}.")
    items = scan.splits.get(params["split"]) or []
    if not items:
        raise DatasetError(f"The dataset {params['data']} has no '{params['split']}' images.")
    picked = random.Random(params["seed"]).sample(items, min(params["n"], len(items)))
    images = model.preprocessing.load(picked).images
    table = scorecard.score_methods(model, images, params.get("methods"), n=len(images), seed=params["seed"],
                                    progress=progress, should_stop=should_stop)
    table.update(data=str(params["data"]), split=params["split"])
    return table


def execute(d: Path) -> dict:
    """The job's body (the worker process, after its slot): claim, score, write the table, record how it ended."""
    d = Path(d)
    run_dir = d.parent
    job = runs.read_json(d / "job.json")
    params = job["params"]
    if lifecycle.claim(d) is None:
        return {**lifecycle.read_status(d), "claimed": False}
    started, last = time.time(), [0.0]
    print(f"scorecard of run {run_dir.name} started: {params}", flush=True)  # stdout is the job's log.txt

    def progress(done: int, total: int, message: str) -> None:
        now = time.time()
        if done == total or now - last[0] >= 1.0:  # a heartbeat a second at most
            last[0] = now
            lifecycle.update(d, heartbeat=now, done=done, total=total, message=message)

    try:
        table = compute(run_dir, params, progress, lambda: lifecycle.cancel_requested(d), job.get("data_roots"))
        path = scorecard.write_scorecard(run_dir, table)
    except Cancelled:
        print("cancelled", flush=True)
        return lifecycle.finish(d, "cancelled")
    except CxrError as exc:
        return lifecycle.finish(d, "failed", str(exc))
    except MemoryError:
        return lifecycle.finish(d, "failed", "The machine ran out of memory while scoring the heatmaps.")
    except OSError as exc:
        return lifecycle.finish(d, "failed", f"Could not read or write the run's files ({exc.strerror or exc}).")
    except Exception as exc:  # noqa: BLE001 - the worker must record any crash truthfully, then stop
        print(traceback.format_exc(), flush=True)  # the job's log.txt
        return lifecycle.finish(d, "failed", f"The scorecard crashed: {exc.__class__.__name__}: {exc}")
    print(f"completed in {time.time() - started:.1f} s: {path}", flush=True)
    return lifecycle.finish(d, "completed", file=str(path), most_faithful=table.get("most_faithful"),
                            seconds=round(time.time() - started, 1))
