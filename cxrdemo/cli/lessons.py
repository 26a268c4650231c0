"""`python -m cxrdemo lessons ...`: list the lessons, run them all and ship their runs as read-only examples."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from cxrdemo.runs import examples


def cmd_list(args) -> int:
    from cxrdemo.views import lessons

    for lesson in lessons.LESSONS.values():
        plan = lessons.recipes(lesson)
        print(f"{lesson.key:10} {len(plan):2} runs at {plan[0].config.img_size} px, {lessons.epochs_words(lesson)} "
              f"epochs; estimated "
              f"{lessons.estimate_seconds(lesson) / 60:.0f} min: {lesson.title}")
    return 0


def cmd_build_examples(args) -> int:
    """Train every run of the chosen lessons, one at a time in this process, then copy them as examples."""
    if args.tiny:
        os.environ["CXRDEMO_LESSON_TINY"] = "1"
    from cxrdemo.runs import store as runs
    from cxrdemo.runs.worker import execute_run
    from cxrdemo.views import lessons

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="cxrdemo-lessons-"))
    out = Path(args.out) if args.out else examples.EXAMPLES_RUNS_DIR
    chosen = args.lesson or list(lessons.LESSONS)
    if not args.out and set(chosen) == set(lessons.LESSONS):
        shutil.rmtree(out, ignore_errors=True)  # a full rebuild replaces every shipped example
    for key in chosen:
        lesson = lessons.LESSONS[key]
        if args.queue:
            _queue_lesson(lesson, work, out)
            continue
        lesson_start = time.perf_counter()
        for r in lessons.recipes(lesson):
            run_start = time.perf_counter()
            d = runs.create_run(r.config, work, name=f"{key}-{r.key}")
            status = execute_run(d, runs_dir=work)
            print(f"{key}/{r.key}: {status.get('state')} in {time.perf_counter() - run_start:.0f} s "
                  f"{status.get('error') or ''}".rstrip(), flush=True)
            if status.get("state") == "completed":
                examples.copy_as_example(d, out)
        print(f"{key}: {time.perf_counter() - lesson_start:.0f} s wall for the whole lesson", flush=True)
    print(f"examples written to {out} (training folders kept in {work})")
    return 0


def _queue_lesson(lesson, work: Path, out: Path) -> None:
    """Queue a lesson's runs through the job system as the Lessons page does, wait for them, and print the estimate
    made before the start beside the measured wall time (issue 31: within 30%?); completed runs become examples."""
    from cxrdemo.runs import lifecycle
    from cxrdemo.runs import store as runs
    from cxrdemo.views import lessons

    est = lessons.estimate(lesson, [], runs_dir=work)  # what the page would say here, before the click
    began = time.perf_counter()
    ids = set(lessons.start(lesson, work))
    while True:
        mine = [i for i in runs.list_runs(work) if i.run_id in ids]
        if len(mine) == len(ids) and all(i.state in lifecycle.FINAL for i in mine):
            break
        time.sleep(2)
    wall = time.perf_counter() - began
    print(f"{lesson.key}: estimated {est.seconds:.0f} s before the start ({est.speed.source} speed, start-up "
          f"{est.start.seconds:.1f} s a run from {est.start.runs} finished runs), measured {wall:.0f} s "
          f"({(est.seconds / wall - 1) * 100:+.0f}% off)", flush=True)
    for info in sorted(mine, key=lambda i: i.run_id):
        print(f"{lesson.key}/{info.run_id}: {info.state}", flush=True)
        if info.state == "completed":
            examples.copy_as_example(info.path, out)


def cmd_results(args) -> int:
    """Each lesson's headline and effect with its 95% interval: this machine's runs, else the shipped examples."""
    from cxrdemo.cli.options import to_json
    from cxrdemo.runs import store as runs
    from cxrdemo.views import lesson_progress, lessons, shift_lesson
    from cxrdemo.views.numbers import difference, difference_interval

    infos, shipped = runs.list_runs(), examples.list_examples()
    records = [lesson_progress.result_record(lesson, infos, shipped) for lesson in lessons.LESSONS.values()]
    records.append(lesson_progress.reading_record(shift_lesson.KEY, shift_lesson.TITLE, shift_lesson.shift_result()))
    if args.json:
        print(to_json(records))
        return 0
    for r in records:
        if r["headline"] is None:
            print(f"{r['key']:10} no finished runs here and no shipped examples")
            continue
        kind = "auroc" if "AUROC" in (r["effect_what"] or "") else "accuracy"  # a score, else a share in points
        effect = (f"{difference(kind, r['effect'])} ({difference_interval(kind, *r['ci95'])}): {r['effect_what']}"
                  if r["effect"] is not None else "no effect measured")
        print(f"{r['key']:10} [{r['source']}] {effect}\n           {r['headline']}")
    return 0


def register(sub: argparse._SubParsersAction, store: argparse.ArgumentParser) -> None:
    """Add `lessons list`, `lessons results` and `lessons build-examples` to the CLI."""
    p = sub.add_parser("lessons", help="guided experiments: list them, or build the shipped example results")
    lsub = p.add_subparsers(dest="lessons_command", required=True)
    q = lsub.add_parser("list", help="each lesson: runs, image size, epochs, estimated time")
    q.set_defaults(func=cmd_list)
    q = lsub.add_parser("results", parents=[store], help="each lesson's headline, effect and 95%% interval: this "
                        "machine's finished runs, else the shipped examples")
    q.add_argument("--json", action="store_true", help="one JSON list: key, title, source, headline, effect, ci95")
    q.set_defaults(func=cmd_results)
    q = lsub.add_parser("build-examples", help="run every lesson here (one job at a time) and copy the runs, "
                        "without weights, into the read-only examples folder shipped with the project")
    q.add_argument("--lesson", action="append", help="only this lesson (repeatable)")
    q.add_argument("--tiny", action="store_true", help="32 px, 1 epoch, 8 images per split: checks the pipeline")
    q.add_argument("--out", default="", help="examples folder (default: the package's examples/runs)")
    q.add_argument("--work-dir", default="", help="where the runs train (default: a new temporary folder)")
    q.add_argument("--queue", action="store_true", help="queue the runs through the job system as the Lessons page "
                   "does and print the estimate made before the start beside the measured wall time")
    q.set_defaults(func=cmd_build_examples)
