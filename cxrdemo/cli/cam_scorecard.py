"""`python -m cxrdemo cam-scorecard`: score every CAM method of the registry on N test images of a run."""

from __future__ import annotations

import argparse
import json
import sys

from cxrdemo.errors import ConfigError, DatasetError


def register(sub: argparse._SubParsersAction) -> None:
    """Add `cam-scorecard` to the CLI's subcommands."""
    p = sub.add_parser("cam-scorecard", help="faithfulness (ROAD) of each CAM method on N test images of a run; "
                                             "writes cam_scorecard.json into the run folder")
    p.add_argument("--run", required=True, help="run id, 'demo', or a run folder")
    p.add_argument("--data", required=True, help="dataset folder with the model's classes, or 'demo'")
    p.add_argument("--n", type=int, default=20, help="images per method (ScoreCAM: at most 4)")
    p.add_argument("--split", default="test")
    p.add_argument("--methods", help="comma-separated subset of the registry (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print the table only; leave the run folder as it is")
    p.set_defaults(func=cmd_cam_scorecard)


def cmd_cam_scorecard(args: argparse.Namespace) -> int:
    """Pick N images of the split (stratified, seeded), score the methods, store and print the table."""
    import random

    from cxrdemo.data import dataset as data
    from cxrdemo.diagnosis import explain, scorecard
    from cxrdemo.diagnosis.predict import load_model

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1 (got {args.n}).")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    for m in methods or []:
        explain.method_class(m)  # an unknown name is reported before any image is read
    model = load_model(args.run, allow_path=True)
    scan = data.scan_dataset(args.data, require_train=False)
    if tuple(scan.classes) != tuple(model.classes):
        raise DatasetError(f"The dataset's classes {list(scan.classes)} differ from the model's {list(model.classes)}.")
    items = scan.splits.get(args.split) or []
    if not items:
        raise DatasetError(f"The dataset {args.data} has no '{args.split}' images.")
    picked = random.Random(args.seed).sample(items, min(args.n, len(items)))
    cached = data.load_images(picked, model.img_size)
    images = data.adjust_intensity(cached.images, model.intensity)

    def echo(done: int, total: int, message: str) -> None:
        print(f"  {done}/{total} {message}", file=sys.stderr, flush=True)

    table = scorecard.score_methods(model, images, methods, n=len(images), seed=args.seed, progress=echo)
    table.update(data=str(args.data), split=args.split)
    if not args.no_write:
        table["file"] = str(scorecard.write_scorecard(model.path, table))
    print(json.dumps(table, indent=1))
    return 0
