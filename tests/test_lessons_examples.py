"""Lessons with shipped example runs: tiny real example runs (built by the project's command into a temporary
examples folder) drive the Lessons page's example results, the estimate, each result view's interval, and the
Compare page's read-only example rows. The real examples in the package are never read here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cxrdemo import paths
from cxrdemo.config import TrainConfig
from cxrdemo.runs import examples, jobs
from cxrdemo.runs import store as runs
from cxrdemo.views import compare, lesson_results, lessons, plots

ROOT = Path(__file__).resolve().parents[1]
LESSONS_PAGE = str(ROOT / "app_pages" / "lessons.py")
COMPARE_PAGE = str(ROOT / "app_pages" / "compare.py")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_examples(tmp_path_factory) -> Path:
    """Every lesson at tiny settings, trained for real and copied as examples by `lessons build-examples --tiny`."""
    if not (paths.demo_run_dir() / "model.pt").is_file():
        pytest.skip("the shipped demo model (weights/demo) starts the transfer lessons and is not in this checkout")
    tmp = tmp_path_factory.mktemp("lesson-examples")
    env = {**os.environ, "CXRDEMO_CACHE_DIR": str(tmp / "cache"), "CXRDEMO_RUNS_DIR": str(tmp / "runs"),
           "CXRDEMO_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "cxrdemo", "lessons", "build-examples", "--tiny", "--out",
                    str(tmp / "examples"), "--work-dir", str(tmp / "work")], env=env, cwd=ROOT, check=True,
                   capture_output=True, timeout=900)
    return tmp / "examples"


@pytest.fixture
def shipped(tiny_examples, monkeypatch) -> list[runs.RunInfo]:
    """The tiny examples as the app sees them (CXRDEMO_EXAMPLES_DIR), with the lessons at the same tiny settings."""
    monkeypatch.setenv("CXRDEMO_EXAMPLES_DIR", str(tiny_examples))
    monkeypatch.setenv(lessons.TINY_ENV, "1")
    # no speed trials of this machine: with its own measured speed the estimate does not use the example times
    monkeypatch.setenv("CXRDEMO_CACHE_DIR", str(tiny_examples.parent / "empty-cache"))
    return examples.list_examples()


def test_every_lesson_has_complete_read_only_example_runs(shipped):
    planned = sum(len(lessons.recipes(lesson)) for lesson in lessons.LESSONS.values())
    assert len(shipped) == planned and all(i.example and i.state == "completed" for i in shipped)
    assert not any((i.path / "model.pt").exists() for i in shipped)
    assert all(examples.wall_seconds(i) > 0 for i in shipped)
    assert lessons.machine_words(shipped).endswith("threads")


@pytest.mark.parametrize("key", list(lessons.LESSONS))
def test_estimate_is_the_example_runs_measured_time_when_the_recipe_matches(key, shipped, monkeypatch):
    lesson = lessons.LESSONS[key]
    est = lessons.estimate(lesson, shipped)
    walls = [examples.wall_seconds(i) for i in lessons.example_runs(lesson, shipped).values()]
    assert est.measured == est.planned == len(walls)
    assert est.seconds == pytest.approx(sum(walls) + est.planned * est.start.process_s)  # trained in-process
    assert "measured" in lessons.estimate_words(lesson, est)
    monkeypatch.delenv(lessons.TINY_ENV)  # full-size recipes: the tiny examples are not their measurements
    full = lessons.estimate(lesson, shipped)
    assert full.measured == 0 and "estimated from image counts" in lessons.estimate_words(lesson, full)


@pytest.mark.parametrize("key", list(lessons.LESSONS))
def test_result_view_of_each_lesson_from_example_runs(key, shipped):
    lesson = lessons.LESSONS[key]
    result = lesson_results.lesson_result(lesson, shipped)
    assert len(result.table) == len(lessons.recipes(lesson)) and result.figures
    assert "95% interval" in result.headline
    if key == "transfer":
        assert result.headline.count("95% interval") == 6  # an AUROC and an accuracy gain per share (issue 31)
        assert (result.table["95% interval low"] <= result.table["test accuracy"]).all()
        assert (result.table["test accuracy"] <= result.table["95% interval high"]).all()
    if key == "freeze":
        assert {"test micro-recall", "seconds per epoch", "trainable parameters", "epochs to best"} <= set(
            result.table.columns)
        assert result.table["trainable parameters"].is_monotonic_decreasing
    if key == "shortcut":
        marked = result.table.iloc[1:]
        assert marked["gap (clean − marked)"].notna().all() and "calls" in result.headline
    if key == "leakage":
        assert "Split by image" in result.headline and "Split by patient" in result.headline


def test_paired_gap_and_its_words():
    right, wrong = np.ones(50, bool), np.zeros(50, bool)
    assert lesson_results.paired_gap(right, wrong) == (1.0, 1.0, 1.0)
    assert lesson_results.verdict(1.0, 1.0) == "the interval excludes zero"
    rng = np.random.default_rng(0)
    a = rng.random(60) < 0.7
    gap, lo, hi = lesson_results.paired_gap(a, a.copy())
    assert gap == lo == hi == 0.0 and lesson_results.verdict(lo, hi).startswith("not significant")
    b = a.copy()
    b[:6] = ~b[:6]
    gap, lo, hi = lesson_results.paired_gap(a, b)
    assert lo <= gap <= hi and lo < hi
    e = lesson_results.accuracy_estimate({"y_true": [1] * 60, "probs": [[1 - x, x] for x in a.astype(float)]})
    assert e.low < a.mean() == e.value < e.high and e.high - e.low < 0.35


# ---------------------------------------------------------------- the Lessons page

def _lessons_page() -> AppTest:
    at = AppTest.from_file(LESSONS_PAGE, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_page_shows_example_results_labelled_until_the_lesson_runs_here(shipped, store, monkeypatch):
    submitted = []

    def launch(d, root, max_jobs=None, backend="local"):  # the queue's door creates the runs; no worker starts
        submitted.append(TrainConfig.from_dict(runs.load_run(d).config))

    monkeypatch.setattr(jobs, "launch", launch)
    from cxrdemo.runs import sources

    monkeypatch.setattr(sources, "check_startable", lambda config, root=None: None)  # no demo model in this store
    at = _lessons_page()
    infos = "\n".join(i.value for i in at.info)
    assert infos.count("Example results, shipped with the project") == len(lessons.LESSONS)
    assert f"`{examples.BUILD_COMMAND}`" in infos and "took" in infos and "threads" in infos
    assert "Not run yet" not in infos
    shown = "\n".join(m.value for m in at.markdown)
    assert shown.count("**Result.**") == len(lessons.LESSONS) and "95\\% interval" in shown  # escaped Markdown
    assert sum("Running it yourself takes about" in c.value and "measured" in c.value for c in at.caption) == 4
    for key in lessons.LESSONS:
        assert at.button(key=f"start-{key}").label == "Run it yourself"
    at.button(key="start-shortcut").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(submitted) == 3 and all(c.tag.startswith("lesson:shortcut:") for c in submitted)
    assert at.button(key="start-shortcut").disabled
    # while the user's runs wait, the examples stay on show, labelled as examples
    assert "\n".join(i.value for i in at.info).count("Example results") == len(lessons.LESSONS)


def test_page_prefers_the_users_own_finished_runs(shipped, store):
    from tests.test_lessons import fabricate

    fabricate(lessons.LESSONS["leakage"], store, np.random.default_rng(0))
    at = _lessons_page()
    assert any("Your results" in s.value for s in at.success)
    assert "\n".join(i.value for i in at.info).count("Example results") == len(lessons.LESSONS) - 1
    assert at.button(key="start-leakage").label.startswith("Start")


# ---------------------------------------------------------------- Compare and Home with examples

def test_compare_lists_example_runs_marked_read_only(shipped, store):
    at = AppTest.from_file(COMPARE_PAGE, default_timeout=600)  # the probe timelapse of six runs takes a while
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    df = at.dataframe[0].value
    assert len(df) == len(shipped) and df["example"].all()  # a fresh store: a full Compare page all the same
    chosen = at.multiselect(key="chosen")
    assert chosen.value and all(r in {i.run_id for i in shipped} for r in chosen.value)
    assert chosen.options and all("(example)" in label for label in chosen.options)  # AppTest: formatted labels
    assert not at.get("expander") or all("Delete" not in e.label for e in at.get("expander"))
    at.selectbox(key="detail_run").set_value(chosen.value[0]).run(timeout=600)
    assert not at.exception, [e.value for e in at.exception]
    assert any("Example runs ship without their weights" in i.value for i in at.info)


def test_compare_names_examples_in_legends_and_never_deletes_them(shipped):
    infos = shipped[:2]
    table = compare.runs_table(infos)
    assert compare.deletable(table) == []
    assert all(" · example" in name for name in compare.point_labels(table))
    fig = plots.curves_figure(infos, "loss")
    assert all("(example)" in t.name for t in fig.data)
    assert all("(example)" in x for x in plots.bar_figure(table, "sec_per_epoch", "Seconds").data[0].x)
    assert not any(compare.has_model(i) for i in infos)


def test_home_mentions_lessons_and_examples(shipped):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    text = "\n".join(m.value for m in at.markdown) + "\n".join(i.value for i in at.info)
    assert "**Lessons**" in text and f"{len(shipped)} example runs shipped" in text


def test_compare_opens_on_the_users_own_runs_else_the_freeze_lessons_examples(tmp_path):
    from cxrdemo.runs import store as runs_store
    from cxrdemo.views import compare

    def info(run_id, tag="", example=False):
        return runs_store.RunInfo(run_id, tmp_path / run_id, config=TrainConfig(tag=tag).to_dict() if tag else {},
                                  example=example)

    shipped = [info(f"t{i}", "lesson:transfer:x", True) for i in range(3)] + [
        info(f"f{i}", "lesson:freeze:cnn5-none", True) for i in range(7)] + [info("s0", "lesson:shortcut:clean", True)]
    ids = [i.run_id for i in shipped]
    assert compare.default_choice(ids, shipped) == ["f1", "f2", "f3", "f4", "f5", "f6"]
    mine = [info("mine-1"), info("mine-2")]
    assert compare.default_choice(["mine-1", "mine-2", *ids], mine + shipped) == ["mine-1", "mine-2"]
    assert compare.default_choice(["t0", "t1"], shipped[:2]) == ["t0", "t1"]  # no freeze lesson: the newest
