"""`python -m cxrdemo jobs ...`: submit, list, cancel and watch background training jobs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cxrdemo.cli.options import EXIT_BAD_INPUT, add_train_options, config_from_args
from cxrdemo.cli.options import runs_dir as _runs_dir
from cxrdemo.errors import ConfigError
from cxrdemo.runs import jobs, slots
from cxrdemo.runs import store as runs


def cmd_submit(args) -> int:
    if args.max_jobs is not None and args.max_jobs < 1:
        raise ConfigError(f"--max-jobs must be at least 1 (got {args.max_jobs}).")
    print(jobs.submit(config_from_args(args), _runs_dir(args), name=args.name, max_jobs=args.max_jobs,
                      backend=args.backend), flush=True)
    return 0


def cmd_list(args) -> int:
    from cxrdemo.views import trainer as trainer_view

    infos = jobs.list_jobs(_runs_dir(args))
    if not infos:
        print(f"No runs in {runs.store_dir(_runs_dir(args))}.")
    for info in infos:
        print(trainer_view.list_line(info))
    return 0


def cmd_cancel(args) -> int:
    status = jobs.cancel(args.run_id, _runs_dir(args), grace_s=args.grace)
    print(f"{args.run_id} {status.get('state')}")
    return 0


def cmd_again(args) -> int:
    print(jobs.resubmit(args.run_id, _runs_dir(args)), flush=True)
    return 0


def cmd_reap(args) -> int:
    for run_id in jobs.reap(_runs_dir(args)):
        print(f"{run_id} interrupted")
    return 0


def cmd_watch(args) -> int:
    from cxrdemo.views import trainer as trainer_view

    d = runs.run_dir(args.run_id, _runs_dir(args))
    deadline = time.monotonic() + args.timeout if args.timeout else None
    last = ""
    while True:
        info = runs.load_run(d)
        line = trainer_view.watch_line(info)
        if line != last:
            print(line, flush=True)
            last = line
        if info.damaged:
            print(f"error: {info.damaged}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if info.state in runs.FINAL:
            break
        if deadline is not None and time.monotonic() > deadline:
            print(f"error: run {args.run_id} is still {info.state} after {args.timeout:g} s.", file=sys.stderr)
            return EXIT_BAD_INPUT
        time.sleep(args.every)
    if info.state == "completed":
        return 0
    print(f"error: run {args.run_id} {info.state}: {info.status.get('error') or 'no details'}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_worker(args) -> int:
    d = Path(args.run_dir)
    execute = None
    if slots.job_kind(d) == "scorecard":  # a run's side job (runs/slots.py: job kinds)
        from cxrdemo.diagnosis import scorecard_job

        execute = scorecard_job.execute
    status = slots.run_worker(d, execute=execute)
    if status.get("claimed") is False and status.get("state") != "cancelled":
        # Another worker has it, or it already ended: this process trains nothing.
        print(f"error: run {Path(args.run_dir).name} is {status.get('state')}, not queued: this worker leaves it "
              "alone.", file=sys.stderr)
        return 1
    return 0 if status.get("state") in ("completed", "cancelled") else 1


def register(sub: argparse._SubParsersAction, store: argparse.ArgumentParser) -> None:
    """Add `jobs` (and the hidden `worker` every job process runs) to the CLI; `store` gives each --runs-dir."""
    p = sub.add_parser("jobs", help="background training jobs: submit, list, cancel, watch")
    jsub = p.add_subparsers(dest="jobs_command", required=True)

    q = jsub.add_parser("submit", parents=[store], help="queue a training run in the background; prints its id")
    add_train_options(q)
    q.add_argument("--max-jobs", type=int, default=None, help="jobs allowed to train at once (default: by cores)")
    q.add_argument("--backend", choices=jobs.BACKENDS, default=None,
                   help="where the job trains: this computer (local) or a Ray cluster (default: ray when "
                        "CXRDEMO_RAY_ADDRESS is set, else local)")
    q.set_defaults(func=cmd_submit)

    q = jsub.add_parser("list", parents=[store], help="one line per run: id, state, epoch k/N, best val accuracy")
    q.set_defaults(func=cmd_list)

    q = jsub.add_parser("cancel", parents=[store], help="cancel a queued or running job (its finished epochs are kept)")
    q.add_argument("run_id")
    q.add_argument("--grace", type=float, default=10.0, help="seconds to wait before stopping it by force")
    q.set_defaults(func=cmd_cancel)

    q = jsub.add_parser("watch", parents=[store],
                        help="print progress until the run ends (exit 0 completed, 2 otherwise)")
    q.add_argument("run_id")
    q.add_argument("--every", type=float, default=1.0, help="seconds between checks")
    q.add_argument("--timeout", type=float, default=0.0, help="give up after this many seconds (0 = never)")
    q.set_defaults(func=cmd_watch)

    q = jsub.add_parser("again", parents=[store],
                        help="start a finished, failed, cancelled or interrupted run again as a new run")
    q.add_argument("run_id")
    q.set_defaults(func=cmd_again)

    q = jsub.add_parser("reap", parents=[store], help="mark runs whose process died as interrupted")
    q.set_defaults(func=cmd_reap)

    # The one worker entry point: waits for a slot in queue order, claims the run under its lock, trains it.
    # Hidden: no help, so it is not listed (argparse would list help=SUPPRESS as "==SUPPRESS=="); the parser
    # names its sub-commands COMMAND rather than {backbones,...,worker}.
    p = sub.add_parser("worker")
    p.add_argument("--run-dir", required=True)
    p.set_defaults(func=cmd_worker)
