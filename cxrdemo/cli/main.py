"""The command line: backbones, scan, train, evaluate, predict (and jobs). Bad input -> exit 2, one line."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from cxrdemo.config import AUGMENTATIONS, BALANCING, HEADS, INTENSITY, OPTIMIZERS, PRECISIONS, SELECTIONS, TrainConfig
from cxrdemo.errors import CxrError

EXIT_BAD_INPUT = 2


def _json(obj) -> str:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), separators=(", ", ": "))


# ---------------------------------------------------------------- train options (shared with `jobs submit`)

def add_train_options(p: argparse.ArgumentParser) -> None:
    """Every TrainConfig field as a flag, defaults from the dataclass."""
    d = TrainConfig()
    p.add_argument("--data", default=d.data, help="dataset folder, or 'demo' for the built-in one")
    p.add_argument("--backbone", default=d.backbone, help="see `python -m cxrdemo backbones`")
    p.add_argument("--init", default=d.init, help="imagenet | scratch | run:<run id>")
    p.add_argument("--freeze", default=d.freeze, help="none | head | k (first k groups) | gradual:T")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--img-size", type=int, default=d.img_size)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--step-size", type=int, default=d.step_size, help="decay lr x gamma every N epochs (0 = off)")
    p.add_argument("--gamma", type=float, default=d.gamma)
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping patience (0 = off)")
    p.add_argument("--select", choices=SELECTIONS, default=d.select,
                   help="the epoch kept: lowest val loss (default) or highest val AUROC (ranking; suits a tuned --threshold)")
    p.add_argument("--augment", nargs="?", const="light", default=d.augment, choices=AUGMENTATIONS,
                   help="none | light (papers) | acquisition; bare --augment means light")
    p.add_argument("--intensity", choices=INTENSITY, default=d.intensity,
                   help="per-image intensity standardisation, repeated at prediction (equalize = histogram)")
    p.add_argument("--balance", choices=BALANCING, default=d.balance)
    p.add_argument("--head", choices=HEADS, default=d.head)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--trunk-lr-factor", type=float, default=d.trunk_lr_factor)
    p.add_argument("--ema", type=float, default=d.ema, help="average the weights over steps (e.g. 0.998; 0 = off)")
    p.add_argument("--threshold", default=d.threshold, metavar="RULE",
                   help="decision rule for two classes: argmax | val (balanced on validation) | spec:x (keep "
                        "specificity >= x on validation, e.g. spec:0.97) | sens:x (keep sensitivity >= x)")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="auto = bfloat16 mixed precision where the CPU/GPU runs it natively (AMX, CUDA), else fp32")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--split-seed", type=int, default=d.split_seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--max-images", type=int, default=d.max_images, help="cap images per split (quick demos)")
    p.add_argument("--name", default="", help="a short label added to the run id")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A validated TrainConfig from parsed flags."""
    fields = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and k != "extra"})


def _runs_dir(args) -> Path | None:
    return Path(args.runs_dir) if getattr(args, "runs_dir", None) else None


# ---------------------------------------------------------------- commands

def cmd_backbones(args) -> int:
    from cxrdemo.model import backbones

    print(f"{'backbone':20} {'groups':>6} {'total':>12}  trainable by freeze level (head | 1..k | none)  imagenet")
    for name in backbones.backbone_names():
        n = backbones.num_groups(name)
        levels = ["head", *[str(k) for k in range(1, n - 1)], "none"]
        counts = [backbones.param_counts(name, args.num_classes, lv)[1] for lv in levels]
        spec = backbones.get_spec(name)
        local = "local" if backbones.find_imagenet_weights(name) else ("not local" if spec.supports_imagenet else "n/a")
        total = backbones.param_counts(name, args.num_classes)[0]
        print(f"{name:20} {n:>6} {total:>12,}  {' | '.join(f'{c:,}' for c in counts)}  {local}")
    return 0


def cmd_scan(args) -> int:
    from cxrdemo.data import dataset as data

    scan = data.scan_dataset(args.data, seed=args.seed)
    print(_json(scan.summary()) if args.json else scan.report())
    return 0


def _print_progress(p) -> None:
    if p.phase == "train" and p.batches:
        if p.batch == p.batches or p.batch % max(1, p.batches // 4) == 0:
            print(f"  epoch {p.epoch}/{p.epochs}  batch {p.batch}/{p.batches}", file=sys.stderr, flush=True)
    elif p.row:
        r = p.row
        print(f"epoch {p.epoch}/{p.epochs}: train loss {r['train_loss']:.4f} acc {r['train_acc']:.3f} | "
              f"val loss {r['val_loss']:.4f} acc {r['val_acc']:.3f} auroc {r['val_auroc']:.3f} | "
              f"{r['seconds']:.1f}s {r['images_per_s']:.0f} img/s ({r['path']})", file=sys.stderr, flush=True)
    elif p.message:
        print(p.message, file=sys.stderr, flush=True)


def cmd_train(args) -> int:
    from cxrdemo.model.train import check_startable
    from cxrdemo.runs import store as runs
    from cxrdemo.runs.worker import execute_run

    config = config_from_args(args)
    check_startable(config, _runs_dir(args))
    d = runs.create_run(config, _runs_dir(args), name=args.name)
    print(d.name, flush=True)
    status = execute_run(d, echo=None if args.quiet else _print_progress, runs_dir=_runs_dir(args))
    if status.get("state") != "completed":
        print(f"error: run {d.name} {status.get('state')}: {status.get('error')}", file=sys.stderr)
        return EXIT_BAD_INPUT
    tm = runs.read_test_metrics(d) or {}
    print(_json({"run": d.name, **{k: v for k, v in tm.items() if k not in ("y_true", "probs")}}))
    return 0


def cmd_worker(args) -> int:
    from cxrdemo.runs.worker import execute_run

    status = execute_run(Path(args.run_dir), runs_dir=_runs_dir(args))
    return 0 if status.get("state") in ("completed", "cancelled") else 1


def cmd_evaluate(args) -> int:
    from cxrdemo.diagnosis.predict import evaluate_run, load_model

    model = load_model(args.run, _runs_dir(args), allow_path=True)
    print(_json(evaluate_run(model, args.data, args.split)))
    return 0


def _cam_path(out: str, image: str, index: int, many: bool) -> Path:
    """--cam OUT.png as given for one image; OUT-<n>-<image stem>.png per image when there are several."""
    p = Path(out)
    if not many:
        return p
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(image).stem)[:60] or "image"
    return p.with_name(f"{p.stem}-{index + 1}-{stem}{p.suffix or '.png'}")


def cmd_predict(args) -> int:
    from cxrdemo.diagnosis import explain, faithfulness
    from cxrdemo.diagnosis.predict import load_model, predict_probs, prepare, read_radiograph
    from cxrdemo.errors import ConfigError, ImageReadError

    model = load_model(args.run, _runs_dir(args), allow_path=True)
    explain.method_class(args.method)  # bad arguments are reported before any image is read
    if not 0.0 <= args.opacity <= 1.0:
        raise ConfigError(f"--opacity must be between 0 and 1 (got {args.opacity}).")
    failed = False
    for i, image in enumerate(args.images):
        try:
            rad = read_radiograph(image, Path(image).name)
        except ImageReadError as exc:
            failed = True
            print(_json({"image": image, "error": str(exc)}), flush=True)
            continue
        x = prepare(model, rad.grey)
        if args.cam:
            result = explain.explain(model, x, args.method)
            probs, k = result.probs, result.predicted
            out = _cam_path(args.cam, image, i, len(args.images) > 1)
            try:
                out.write_bytes(explain.to_png_bytes(explain.overlay(rad.grey, result.cam, args.opacity)))
            except OSError as exc:
                raise ConfigError(f"Could not write the heatmap to {out}: {exc.strerror or exc}.") from None
        else:
            probs = predict_probs(model, x.unsqueeze(0))[0]
            k = int(model.decide(probs)[0])
        line = {"image": image, "class": model.classes[k],
                "probabilities": {c: round(float(p), 6) for c, p in zip(model.classes, probs)},
                "looks_like_cxr": rad.looks_like_cxr, "warning": rad.warning}
        if args.cam:
            line.update(cam=str(out), method=args.method,
                        faithfulness=faithfulness.measure_explanation(model, x, result).to_dict())
        print(_json(line), flush=True)
    return EXIT_BAD_INPUT if failed else 0


def cmd_demo_model(args) -> int:
    from cxrdemo.cli.demo_model import build_demo_model

    evals = []
    for spec in args.eval:
        root, _, split = spec.rpartition(":") if ":" in spec else (spec, "", "test")
        evals.append((root, split or "test"))
    overrides = {k: v for k, v in (("epochs", args.epochs), ("threads", args.threads)) if v is not None}
    card = build_demo_model(args.data, evals, Path(args.out) if args.out else None, _runs_dir(args),
                            echo=None if args.quiet else _print_progress, **overrides)
    print(_json({"run": card["run_id"], "train_minutes": card["train_minutes"],
                 "evaluations": [{"data": e["data"], **e["metrics"]} for e in card["evaluations"]]}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of `python -m cxrdemo`."""
    parser = argparse.ArgumentParser(prog="python -m cxrdemo", description=__doc__)
    parser.add_argument("--runs-dir", help="run store (default $CXRDEMO_RUNS_DIR or ./runs)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backbones", help="the backbone registry with parameter counts per freeze level")
    p.add_argument("--num-classes", type=int, default=2)
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("scan", help="what a dataset folder holds, and what would be skipped")
    p.add_argument("data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("train", help="train in the foreground; prints the run id, then test metrics as JSON")
    add_train_options(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a run's model on a dataset split")
    p.add_argument("--run", required=True, help="run id, 'demo', or a run folder")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="one JSON line per image (an unreadable image: an 'error' line, exit 2)")
    p.add_argument("--run", default="demo", help="run id, 'demo', or a run folder")
    p.add_argument("images", nargs="+")
    p.add_argument("--cam", metavar="OUT.png", help="write the heatmap overlay (several images: OUT-<n>-<name>.png)")
    p.add_argument("--method", default="GradCAM", help="GradCAM | GradCAM++ | EigenCAM | ScoreCAM | LayerCAM")
    p.add_argument("--opacity", type=float, default=0.4, help="heatmap opacity in the overlay, 0 to 1")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo-model", help="retrain the shipped demo model (weights/demo) and its model card")
    p.add_argument("--data", required=True, help="training set folder (train/ and val/ with one folder per class)")
    p.add_argument("--eval", action="append", default=[], metavar="DIR[:SPLIT]",
                   help="a test set to report with bootstrap intervals (repeatable)")
    p.add_argument("--out", help="install folder (default weights/demo)")
    p.add_argument("--epochs", type=int, help="epochs of every stage (default: the recipe's; a small number = quick check)")
    p.add_argument("--threads", type=int)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo_model)

    p = sub.add_parser("worker", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", required=True)
    p.set_defaults(func=cmd_worker)
    from cxrdemo.cli import jobs as cli_jobs  # `jobs ...` and the hidden `jobs-worker` live in cli_jobs.py

    cli_jobs.register(sub)
    from cxrdemo.cli import cam_scorecard

    cam_scorecard.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit code (2 for anything the user can fix)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "runs_dir", None):
        import os

        os.environ["CXRDEMO_RUNS_DIR"] = str(Path(args.runs_dir).resolve())
    try:
        return int(args.func(args) or 0)
    except CxrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
