"""A teacher never loses a result (issue 31): a finished lesson's results stay shown while it is started again, and a
cancelled or failed restart is reported beside them, never instead of them (views and the page under AppTest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from cxrdemo.runs import lifecycle
from cxrdemo.runs import store as runs
from cxrdemo.views import lesson_progress, lesson_results, lessons
from tests.test_lessons import fabricate

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "lessons.py")
LESSON = lessons.LESSONS["shortcut"]


def restart(root: Path) -> list[Path]:
    """Queue the lesson's runs again, as the page's button does (no worker: they stay queued)."""
    return [runs.create_run(r.config, root, name=r.key) for r in lessons.recipes(LESSON)]


def page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def shown_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_finished_runs_are_each_recipes_latest_completed_run(tmp_path):
    fabricate(LESSON, tmp_path, np.random.default_rng(0))
    first = {i.run_id for i in runs.list_runs(tmp_path)}
    queued = restart(tmp_path)
    infos = runs.list_runs(tmp_path)
    assert {i.run_id for i in lesson_progress.finished_runs(LESSON, infos)} == first
    assert lessons.progress(LESSON, infos)["active"] == 3
    assert lesson_progress.replaced_rows(LESSON, infos) == (0, 3)
    assert lesson_progress.problem_words(LESSON, infos) is None
    # one new run finishes: its row is replaced, the other two stay
    lifecycle.claim(queued[0])
    runs.atomic_write_json(queued[0] / "test_metrics.json", runs.read_test_metrics(
        next(i.path for i in infos if i.run_id in first and i.config["tag"].endswith(":clean"))))
    lifecycle.finish(queued[0], "completed")
    infos = runs.list_runs(tmp_path)
    kept = {i.run_id for i in lesson_progress.finished_runs(LESSON, infos)}
    assert queued[0].name in kept and len(kept & first) == 2
    assert lesson_progress.replaced_rows(LESSON, infos) == (1, 3)
    # the rest are cancelled: the results stay, and the problem is said
    for d in queued[1:]:
        lifecycle.request_cancel(d)
    infos = runs.list_runs(tmp_path)
    assert len(lesson_progress.finished_runs(LESSON, infos)) == 3
    words = lesson_progress.problem_words(LESSON, infos)
    assert "2 cancelled" in words and "earlier finished runs (3 of 3 recipes)" in words
    result = lesson_results.lesson_result(LESSON, lesson_progress.finished_runs(LESSON, infos))
    assert result.table["clean accuracy"].notna().all()


def test_page_keeps_results_through_a_restart_that_is_cancelled(store):
    fabricate(LESSON, store, np.random.default_rng(0))
    at = page()
    before = shown_text(at)
    assert "**Result.**" in before and any("Your results" in s.value for s in at.success)
    queued = restart(store)
    at = page()
    assert at.button(key="start-shortcut").disabled  # the restart is waiting
    assert any("waiting or training" in str(p.proto.text) for p in at.get("progress"))
    assert shown_text(at).count("**Result.**") == before.count("**Result.**")
    assert any("0 of 3 rows already come from the new start" in s.value for s in at.success)
    at.button(key="cancel-shortcut").click().run()  # the teacher cancels on the Lessons page itself
    assert not at.exception
    assert [runs.read_status(d)["state"] for d in queued] == ["cancelled"] * 3
    at = page()
    assert not at.button(key="start-shortcut").disabled
    assert not [b for b in at.button if b.key == "cancel-shortcut"]  # nothing left to cancel
    assert not at.error  # a cancelled restart is not a red error
    warned = "\n".join(w.value for w in at.warning)
    assert "3 cancelled" in warned and "results below are from your earlier finished runs" in warned
    assert shown_text(at) == before  # the same results, sentence for sentence
    assert "Example results" not in "\n".join(i.value for i in at.info)


def test_page_reports_a_failed_first_start_with_its_reason(store):
    for d in restart(store):
        lifecycle.claim(d)
        lifecycle.finish(d, "failed", error="The lesson's images could not be read.")
    at = page()
    warned = "\n".join(w.value for w in at.warning)
    assert "3 failed" in warned and "could not be read" in warned and "earlier finished" not in warned
    assert "**Result.**" not in shown_text(at)
    assert "\n".join(i.value for i in at.info).count("Not run yet") == len(lessons.LESSONS) - 1  # not this one


def test_a_student_cancels_only_the_lesson_runs_of_this_browser(store):
    from cxrdemo.runs import policy

    mine = [runs.create_run(r.config, store, name=r.key, browser="b-me") for r in lessons.recipes(LESSON)[:2]]
    theirs = runs.create_run(lessons.recipes(LESSON)[2].config, store, name="other", browser="b-other")
    student = policy.Asker(classroom=True, browser="b-me")
    assert lessons.cancel(LESSON, store, asker=student) == (2, [])
    assert [runs.read_status(d)["state"] for d in mine] == ["cancelled", "cancelled"]
    assert runs.read_status(theirs)["state"] == "queued"
    teacher = policy.Asker(classroom=True, teacher=True, browser="b-me")
    assert lessons.cancel(LESSON, store, asker=teacher) == (1, [])
    assert runs.read_status(theirs)["state"] == "cancelled"
