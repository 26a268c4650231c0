"""Idle tabs cost little (issue 30 audit): the store parses a run's files once per version of them (pages list
2,000 runs every few seconds), yet a dead worker still reads 'interrupted' at once; a lesson's result view is
remade only when one of its runs changes; the Lessons page polls only while a lesson's runs wait or train."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cxrdemo import fileio
from cxrdemo.config import TrainConfig
from cxrdemo.runs import store as runs
from cxrdemo.views import lessons
from tests.helpers import fake_status

REPO = Path(__file__).resolve().parents[1]


def test_unchanged_run_files_are_parsed_once_and_changes_are_seen(run_store, monkeypatch):
    dirs = [runs.create_run(TrainConfig(data="demo"), run_store) for _ in range(3)]
    for d in dirs:
        fake_status(d, state="completed")
    runs.list_runs(run_store)
    reads = []
    real = fileio.read_json
    monkeypatch.setattr(fileio, "read_json", lambda p: reads.append(Path(p).name) or real(p))
    assert [i.state for i in runs.list_runs(run_store)] == ["completed"] * 3 and reads == []
    fake_status(dirs[1], state="failed", error="boom")  # written as workers write: replaced atomically
    reads.clear()
    assert [i.state for i in runs.list_runs(run_store)] == ["completed", "failed", "completed"]
    assert reads == ["config.json", "status.json"]
    # The truth about a dead worker is judged at every read, never cached with the file.
    fake_status(dirs[2], state="running", pid=2**22 + 12345, heartbeat=0)
    runs.list_runs(run_store)
    assert runs.list_runs(run_store)[2].state == "interrupted"


def test_a_lessons_result_stamp_changes_only_with_its_runs(run_store):
    lesson = next(iter(lessons.LESSONS.values()))
    d = runs.create_run(lessons.recipes(lesson)[0].config, run_store)
    fake_status(d, state="running", pid=os.getpid())
    before = lessons.runs_stamp(lesson, runs.list_runs(run_store))
    other = runs.create_run(TrainConfig(data="demo", epochs=7), run_store)  # not the lesson's
    fake_status(other, state="completed")
    assert lessons.runs_stamp(lesson, runs.list_runs(run_store)) == before
    fake_status(d, state="completed")
    assert lessons.runs_stamp(lesson, runs.list_runs(run_store)) != before


def test_the_lessons_page_polls_only_while_runs_wait_or_train():
    page = (REPO / "app_pages" / "lessons.py").read_text()
    assert not re.search(r"@st\.fragment\(run_every=\d", page)  # no watcher that polls unconditionally
    assert 'st.fragment(run_every=3 if counts["active"] else None)(watch)' in page
