"""`python -m cxrdemo cam-scorecard`: score every CAM method of the registry on N test images of a run."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from cxrdemo.cli.options import EXIT_BAD_INPUT
from cxrdemo.cli.options import runs_dir as _runs_dir
from cxrdemo.errors import ConfigError


def register(sub: argparse._SubParsersAction, store: argparse.ArgumentParser) -> None:
    """Add `cam-scorecard` to the CLI's subcommands; `store` gives it --runs-dir."""
    p = sub.add_parser("cam-scorecard", parents=[store], help="faithfulness (ROAD) of each CAM method on N test images of a run; "
                                             "writes cam_scorecard.json into the run folder")
    p.add_argument("--run", required=True, help="run id, 'demo', or a run folder")
    p.add_argument("--data", default="", help="dataset folder with the model's classes, or 'demo' "
                                              "(default: the run's own dataset)")
    p.add_argument("--n", type=int, default=20, help="images per method (ScoreCAM: at most 4)")
    p.add_argument("--split", default="test")
    p.add_argument("--methods", help="comma-separated subset of the registry (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--detach", action="store_true",
                   help="a run of the store: queue the job, print its folder and return (follow it on the pages)")
    p.add_argument("--no-write", action="store_true",
                   help="score in this process and print the table only; leave the run folder as it is")
    p.set_defaults(func=cmd_cam_scorecard)


def cmd_cam_scorecard(args: argparse.Namespace) -> int:
    """A run of the store: the same background job the pages start, followed here; else score in this process."""
    from cxrdemo import paths
    from cxrdemo.diagnosis import scorecard, scorecard_job
    from cxrdemo.runs import store as runs

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1 (got {args.n}).")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    params = scorecard_job.params_for(args.n, args.data, args.split, methods, args.seed)
    in_store = args.run != paths.DEMO_RUN_NAME and not (os.sep in args.run or args.run.startswith("."))
    d = runs.run_dir(args.run, _runs_dir(args), allow_path=True)
    if in_store and not args.no_write:
        job = scorecard_job.submit(args.run, _runs_dir(args), **params)
        if args.detach:
            print(job, flush=True)
            return 0
        return _follow(d)
    if not params["data"]:
        if not (d / "config.json").is_file():
            raise ConfigError("--data is needed for this model (it records no dataset).")
        params["data"] = str(runs.read_json(d / "config.json").get("config", {}).get("data") or "")

    def echo(done: int, total: int, message: str) -> None:
        print(f"  {done}/{total} {message}", file=sys.stderr, flush=True)

    table = scorecard_job.compute(d, params, progress=echo)
    if not args.no_write:
        table["file"] = str(scorecard.write_scorecard(d, table))
    print(json.dumps(table, indent=1))
    return 0


def _follow(run_dir, every_s: float = 1.0) -> int:
    """Print the job's progress until it ends; Ctrl-C cancels it. The table on success."""
    from cxrdemo.diagnosis import scorecard, scorecard_job
    from cxrdemo.runs import lifecycle

    last = ""
    try:
        while True:
            st = scorecard_job.status(run_dir) or {}
            line = f"  {st.get('state')} {st.get('done', 0)}/{st.get('total', '?')} {st.get('message') or ''}"
            if line != last:
                print(line.rstrip(), file=sys.stderr, flush=True)
                last = line
            if st.get("state") in lifecycle.FINAL:
                break
            time.sleep(every_s)
    except KeyboardInterrupt:
        scorecard_job.cancel(run_dir)
        print("error: the CAM scorecard was cancelled.", file=sys.stderr)
        return EXIT_BAD_INPUT
    if st.get("state") != "completed":
        print(f"error: the CAM scorecard {st.get('state')}: {st.get('error') or 'no details'}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps({**scorecard.read_scorecard(run_dir), "file": st.get("file")}, indent=1))
    return 0
