"""Idle cost of open Trainer and Lessons tabs on a store of many finished runs: `python benchmarks/bench_idle_pages.py`.

Makes N fake finished runs (config.json, status.json, metrics.csv; default 2,000) in a temporary store, renders each
page once with Streamlit's AppTest (the first render: what a student waits for) and then times the work one periodic
refresh of its fragments does (the Trainer's jobs panel every 2 s, each Lessons tab's watcher every 3 s while it
polls), as CPU seconds per wall second of an idle tab. Target (issue 30): < 5% of a core per idle tab, pages <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_store(root: Path, n: int) -> None:
    """N finished runs of the Trainer's default recipe, as workers leave them (no weights)."""
    from cxrdemo.config import TrainConfig

    cfg = TrainConfig(data="demo", backbone="cnn5", epochs=3).to_dict()
    rows = "epoch,train_loss,val_loss,train_acc,val_acc,seconds\n" + "".join(
        f"{e},{1 / e:.3f},{1.2 / e:.3f},{0.5 + e / 10:.3f},{0.5 + e / 20:.3f},2.0\n" for e in (1, 2, 3))
    now = time.time() - n
    for i in range(n):
        d = root / f"20260101-{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}-cnn5-none-{i}"
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"run_id": d.name, "created": now + i, "config": cfg,
                                                   "dataset": {"name": "demo"}, "browser": f"b{i % 30}"}))
        (d / "status.json").write_text(json.dumps({"state": "completed", "epochs": 3, "epoch": 3,
                                                   "test_accuracy": 0.8, "updated": now + i}))
        (d / "metrics.csv").write_text(rows)


def render(page: str) -> float:
    """Seconds of the first render of a page (AppTest, no browser)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app_pages" / page), default_timeout=600)
    start = time.perf_counter()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return time.perf_counter() - start


def cpu_of(fn, repeats: int = 5) -> float:
    """CPU seconds of one call of `fn` (the mean of `repeats`)."""
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxr-bench-idle-") as tmp:
        root = Path(tmp) / "runs"
        make_store(root, args.runs)
        os.environ["CXRDEMO_RUNS_DIR"] = str(root)
        from cxrdemo.runs import jobs
        from cxrdemo.views import lesson_results, lessons
        from cxrdemo.views import trainer as tv

        trainer_s, lessons_s = render("trainer.py"), render("lessons.py")
        # One refresh of each fragment's data work, as the page does it (the same calls, no Streamlit around them).
        trainer_tick = cpu_of(lambda: tv.panel_rows(jobs.list_jobs(root)))

        def lesson_tick(lesson):
            infos = jobs.list_jobs(root)
            if lessons.progress(lesson, infos)["completed"]:
                lesson_results.lesson_result(lesson, infos)

        lesson_ticks = [cpu_of(lambda lesson=lesson: lesson_tick(lesson)) for lesson in lessons.LESSONS.values()]
        # A watcher polls every 3 s only while its lesson has runs waiting or training (app_pages/lessons.py).
        polling = [bool(lessons.progress(lesson, jobs.list_jobs(root))["active"])
                   for lesson in lessons.LESSONS.values()]
        lesson_cpu = sum(t / 3 for t, polls in zip(lesson_ticks, polling) if polls)
        print(f"{args.runs} runs; first render: Trainer {trainer_s:.1f} s, Lessons {lessons_s:.1f} s (target <= 3 s)")
        print(f"idle Trainer tab: {trainer_tick * 1000:.0f} ms CPU per 2 s refresh = {trainer_tick / 2:.1%} of a core")
        print(f"idle Lessons tab: {sum(polling)} of {len(polling)} lesson watchers poll; "
              f"{lesson_cpu:.1%} of a core (target < 5% per tab); one watcher's refresh when it polls: "
              f"{max(lesson_ticks) * 1000:.0f} ms CPU = {max(lesson_ticks) / 3:.1%} of a core")


if __name__ == "__main__":
    main()
