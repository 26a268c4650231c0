"""The command line: backbones, scan, train, evaluate, compare, predict, report, calibrate, model-card, jobs.

Bad input -> exit 2, one line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cxrdemo.cli import cam_scorecard
from cxrdemo.cli import jobs as cli_jobs
from cxrdemo.cli import lessons as cli_lessons
from cxrdemo.cli import tune as cli_tune
from cxrdemo.cli.options import (
    EXIT_BAD_INPUT,
    RUNS_DIR_HELP,
    add_train_flag,
    add_train_options,
    config_from_args,
    runs_dir_parent,
)
from cxrdemo.cli.options import runs_dir as _runs_dir
from cxrdemo.cli.options import to_json as _json
from cxrdemo.errors import CxrError
from cxrdemo.runs.policy import Refused

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
    from cxrdemo import data

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
    from cxrdemo.runs import store as runs
    from cxrdemo.runs.sources import check_startable
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


def cmd_evaluate(args) -> int:
    from cxrdemo.diagnosis.predict import evaluate_run, load_model

    model = load_model(args.run, _runs_dir(args), allow_path=True)
    out = Path(args.out) if args.out else None
    if out is None and args.run != "demo" and os.access(model.path, os.W_OK):
        # beside the run's own test_predictions.csv, named after the dataset folder and split
        name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(str(args.data)).resolve().name)[:60]
        out = model.path / f"test_predictions-{name or 'data'}-{args.split}.csv"
    print(_json(evaluate_run(model, args.data, args.split, out)))
    return 0


def cmd_compare(args) -> int:
    from cxrdemo.model import paired, predictions
    from cxrdemo.runs import store as runs

    preds = []
    for run in (args.run_a, args.run_b):
        d = runs.run_dir(run, _runs_dir(args), allow_path=True)
        preds.append(predictions.read(d / predictions.FILE))
    result = paired.compare(*preds, n_resamples=args.resamples)
    print(f"{result.n} test images in common" + (f" ({result.unmatched} seen by one run only)"
                                                  if result.unmatched else ""))
    for d in result.differences:
        print(f"{d.metric:9} A {d.a:.4f}  B {d.b:.4f}  B-A {d.delta:+.4f}  95% interval {d.low:+.4f} to {d.high:+.4f}")
    from cxrdemo.views.checks import difference_sentence

    for d in result.differences:
        print(difference_sentence(d, result.n))
    return 0


def _cam_path(out: str, image: str, index: int, many: bool) -> Path:
    """--cam OUT.png as given for one image; OUT-<n>-<image stem>.png per image when there are several."""
    p = Path(out)
    if not many:
        return p
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(image).stem)[:60] or "image"
    return p.with_name(f"{p.stem}-{index + 1}-{stem}{p.suffix or '.png'}")


def cmd_predict(args) -> int:
    from cxrdemo.diagnosis import explain, faithfulness, result
    from cxrdemo.diagnosis.predict import load_model, read_radiograph
    from cxrdemo.errors import ConfigError, ImageReadError
    from cxrdemo.population import parse_age
    from cxrdemo.views import predict_json

    model = load_model(args.run, _runs_dir(args), allow_path=True)
    explain.method_class(args.method)  # bad arguments are reported before any image is read
    stated_age = None if args.age is None else parse_age(args.age)
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
        res = result.assess(model, rad, stated_age=stated_age)  # the one answer: everything below reads it
        line = predict_json.line(model, res, image, args.level)
        if args.cam:
            heat = explain.heatmap(model, res, args.method)
            out = _cam_path(args.cam, image, i, len(args.images) > 1)
            try:
                out.write_bytes(explain.to_png_bytes(explain.overlay(rad.grey, heat.cam, args.opacity)))
            except OSError as exc:
                raise ConfigError(f"Could not write the heatmap to {out}: {exc.strerror or exc}.") from None
            line.update(cam=str(out), method=args.method,
                        faithfulness=predict_json.faithfulness(faithfulness.measure(model, res, heat)))
        print(_json(line), flush=True)
    return EXIT_BAD_INPUT if failed else 0


def cmd_report(args) -> int:
    import time

    from cxrdemo.diagnosis import explain, worklist
    from cxrdemo.diagnosis.predict import load_model
    from cxrdemo.errors import ConfigError
    from cxrdemo.fileio import atomic_write_bytes
    from cxrdemo.views import report, report_pdf

    out = Path(args.out)
    if out.suffix.lower() != ".pdf":
        raise ConfigError(f"--out must name a .pdf file (got {args.out}).")
    if not out.parent.is_dir():
        raise ConfigError(f"Cannot write {out}: the folder {out.parent} does not exist.")
    explain.method_class(args.method)  # bad arguments are reported before any image is read
    if len(args.images) > worklist.MAX_FILMS:
        raise ConfigError(f"A report takes at most {worklist.MAX_FILMS} images (got {len(args.images)}): split them.")
    model = load_model(args.run, _runs_dir(args), allow_path=True)
    start = time.perf_counter()
    say = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    films = worklist.assess_films(model, [(Path(p).name, p) for p in args.images],
                                  progress=lambda i, n, f: say(f"read {i}/{n}: {f.name}"))
    if not any(f.readable for f in films):
        raise ConfigError("None of the files could be read as an image: "
                          + " ".join(f"{f.name}: {f.error}" for f in films))
    doc = report.build(model, films, label=args.run, method=args.method, level=args.level,
                       faithfulness=args.faithfulness, progress=lambda i, n, name: say(f"page {i}/{n}: {name}"))
    try:
        atomic_write_bytes(out, report_pdf.write(doc))
    except OSError as exc:
        raise ConfigError(f"Could not write the report to {out}: {exc.strerror or exc}.") from None
    unread = [f for f in films if not f.readable]
    print(_json({"report": str(out), "films": len(doc.pages), "unreadable": [f.name for f in unread],
                 "faithfulness": args.faithfulness, "seconds": round(time.perf_counter() - start, 1)}))
    if unread:
        print(f"error: {len(unread)} of {len(films)} files could not be read (the report lists them): "
              f"{', '.join(f.name for f in unread)}.", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def cmd_calibrate(args) -> int:
    from cxrdemo.runs.records import add_trust_records

    say = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    model = add_trust_records(args.run, _runs_dir(args), args.data, say, domain_only=args.domain_only)
    r = model.records
    if args.domain_only:
        print(_json({"run": args.run, "domain": {k: r["domain"][k] for k in ("method", "cutoff", "quantile",
                                                                              "n_train", "n_val", "layers")}}))
        return 0
    print(_json({"run": args.run, "calibration": r["calibration"]["method"],
                 "temperature": r["calibration"]["temperature"], "bias": r["calibration"].get("bias", []),
                 "conformal": [{k: c[k] for k in ("level", "qhat", "n", "ok", "reason")}
                               for c in r["conformal"]["levels"]],
                 "domain": {k: r["domain"][k] for k in ("method", "cutoff", "quantile", "n_train", "n_val")}}))
    return 0


def cmd_demo_model(args) -> int:
    from cxrdemo.cli.demo_model import build_demo_model, parse_eval, refresh_card
    from cxrdemo.errors import ConfigError

    evals = [parse_eval(spec) for spec in args.eval]
    if args.card_only:
        card = refresh_card(evals, Path(args.out) if args.out else None)
        print(_json({"run": card["run_id"], "evaluations": [{"data": e["data"], "label": e.get("label"),
                                                             **e["metrics"]} for e in card["evaluations"]]}))
        return 0
    if not args.data:
        raise ConfigError("demo-model needs --data, the training set folder (or --card-only to rewrite the card).")
    overrides = {k: v for k, v in (("epochs", args.epochs), ("threads", args.threads)) if v is not None}
    card = build_demo_model(args.data, evals, Path(args.out) if args.out else None, _runs_dir(args),
                            echo=None if args.quiet else _print_progress, **overrides)
    print(_json({"run": card["run_id"], "train_minutes": card["train_minutes"],
                 "evaluations": [{"data": e["data"], **e["metrics"]} for e in card["evaluations"]]}))
    return 0


def cmd_model_card(args) -> int:
    from cxrdemo.cli.demo_model import evaluate_model_on, parse_eval
    from cxrdemo.runs import store as runs
    from cxrdemo.views.model_card import model_card

    d = runs.run_dir(args.run, _runs_dir(args), allow_path=True)
    extra = [evaluate_model_on(d, root, split, label=label) for root, split, label in map(parse_eval, args.eval)]
    text = model_card(d, extra)
    if args.out:
        from cxrdemo import fileio

        fileio.atomic_write_bytes(Path(args.out), text.encode())
    print(text, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of `python -m cxrdemo`."""
    parser = argparse.ArgumentParser(prog="python -m cxrdemo", description=__doc__)
    parser.add_argument("--runs-dir", help=RUNS_DIR_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")  # not listing the hidden worker
    store = runs_dir_parent()  # --runs-dir also after the sub-command, where users type it

    p = sub.add_parser("backbones", parents=[store],
                       help="the backbone registry with parameter counts per freeze level")
    p.add_argument("--num-classes", type=int, default=2)
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("scan", parents=[store], help="what a dataset folder holds, and what would be skipped")
    p.add_argument("data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("train", parents=[store],
                       help="train in the foreground; prints the run id, then test metrics as JSON")
    add_train_options(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", parents=[store], help="metrics of a run's model on a dataset split")
    p.add_argument("--run", required=True, help="run id, 'demo', or a run folder")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", metavar="FILE.csv", help="per-image predictions (default: test_predictions-<dataset>-"
                   "<split>.csv in the run folder; the demo model writes none unless asked)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", parents=[store],
                       help="is B better than A? paired bootstrap 95%% intervals on their common test images")
    p.add_argument("run_a", metavar="RUN_A", help="run id or run folder")
    p.add_argument("run_b", metavar="RUN_B", help="run id or run folder")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", parents=[store],
                       help="one JSON line per image (an unreadable image: an 'error' line, exit 2)")
    p.add_argument("--run", default="demo", help="run id, 'demo', or a run folder")
    p.add_argument("images", nargs="+")
    p.add_argument("--cam", metavar="OUT.png", help="write the heatmap overlay (several images: OUT-<n>-<name>.png)")
    p.add_argument("--method", default="GradCAM", help="GradCAM | GradCAM++ | EigenCAM | ScoreCAM | LayerCAM")
    p.add_argument("--opacity", type=float, default=0.4, help="heatmap opacity in the overlay, 0 to 1")
    p.add_argument("--level", type=float, default=0.90, choices=(0.90, 0.95),
                   help="coverage of the prediction set: 0.90 (default) or 0.95")
    p.add_argument("--age", metavar="YEARS",
                   help="the patient's age, checked against the model's population when a DICOM header gives none")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("report", parents=[store],
                       help="a PDF report of one or more images: a summary table, then a page per image")
    p.add_argument("--run", default="demo", help="run id, 'demo', or a run folder")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True, metavar="REPORT.pdf", help="the PDF to write")
    p.add_argument("--method", default="GradCAM", help="GradCAM | GradCAM++ | EigenCAM | ScoreCAM | LayerCAM")
    p.add_argument("--level", type=float, default=0.90, choices=(0.90, 0.95),
                   help="coverage of the prediction set: 0.90 (default) or 0.95")
    p.add_argument("--faithfulness", action="store_true",
                   help="also measure each heatmap's faithfulness (ROAD, about 3 s per image on 2 cores)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("calibrate", parents=[store],
                       help="add calibration, prediction sets and the in-domain check to a run's model (no retraining)")
    p.add_argument("--run", required=True, help="run id, 'demo', or a run folder")
    p.add_argument("--data", help="the dataset the run trained on (default: the folder its config records)")
    p.add_argument("--domain-only", action="store_true",
                   help="refit only the in-domain description; the calibration and prediction sets stay as they are")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("demo-model", parents=[store],
                       help="retrain the shipped demo model (weights/demo) and its model card")
    add_train_flag(p, "data", default=None,
                   help="training set folder (train/ and val/ with one folder per class); not with --card-only")
    p.add_argument("--eval", action="append", default=[], metavar="DIR[:SPLIT[:LABEL]]",
                   help="a test set to report with bootstrap intervals (repeatable); LABEL in-distribution "
                        "(default) or shifted: the card and the Diagnosis page lead with the shifted one")
    p.add_argument("--out", help="install folder (default weights/demo)")
    add_train_flag(p, "epochs", default=None,
                   help="epochs of every stage (default: the recipe's; a small number = quick check)")
    add_train_flag(p, "threads", default=None)
    p.add_argument("--card-only", action="store_true",
                   help="no training: re-measure the installed model on the --eval sets (none: keep the recorded "
                        "ones) and rewrite evaluation.json and MODEL_CARD.md; also writes the population record into the "
                        "model file (weights untouched)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo_model)

    p = sub.add_parser("model-card", parents=[store], help="print the model card (Markdown) of a completed run")
    p.add_argument("--run", required=True, help="run id, 'demo', or a run folder")
    p.add_argument("--eval", action="append", default=[], metavar="DIR[:SPLIT[:LABEL]]",
                   help="also measure the model on this set (repeatable); LABEL in-distribution (default) or shifted")
    p.add_argument("--out", metavar="FILE.md", help="also write the card to this file")
    p.set_defaults(func=cmd_model_card)

    cli_jobs.register(sub, store)  # `jobs ...` and the hidden `worker` every job process runs
    cli_lessons.register(sub, store)
    cam_scorecard.register(sub, store)
    cli_tune.register(sub, store)  # `tune`: the timed trial of arithmetic and memory layout, ahead of any run
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit code (2 for anything the user can fix)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "runs_dir", None):
        os.environ["CXRDEMO_RUNS_DIR"] = str(Path(args.runs_dir).resolve())
    try:
        return int(args.func(args) or 0)
    except Refused as exc:  # the classroom policy at the queue ($CXRDEMO_CLASSROOM): worded by views
        from cxrdemo.views.classroom import refusal_words

        print(f"error: {refusal_words(exc.refusal)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CxrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
