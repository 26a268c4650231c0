"""A refused "Start again" stays on screen (issue 30 audit: it disappeared within 2 s, when the jobs panel redrew)."""

from __future__ import annotations

import os
from pathlib import Path

from streamlit.testing.v1 import AppTest

from cxrdemo.config import TrainConfig
from cxrdemo.runs import store as runs
from cxrdemo.views import classroom as cls
from tests.helpers import fake_status, page_browser, server_address

TRAINER = str(Path(__file__).resolve().parents[1] / "app_pages" / "trainer.py")


def test_a_refused_start_again_stays_until_the_next_click(run_store, monkeypatch):
    monkeypatch.setenv("CXRDEMO_CLASS_MAX_JOBS", "1")
    monkeypatch.delenv(cls.ROOTS_ENV, raising=False)
    with server_address("0.0.0.0"):
        at = AppTest.from_file(TRAINER, default_timeout=60)
        at.run()
        me = page_browser(at)
        busy = runs.create_run(TrainConfig(data="demo", epochs=2, img_size=64), run_store, browser=me)
        fake_status(busy, state="running", pid=os.getpid(), phase="train", epochs=2, epoch=1)
        failed = runs.create_run(TrainConfig(data="demo", epochs=2, img_size=64), run_store, browser=me)
        fake_status(failed, state="failed", error="boom")
        at.run()
        at.button(key=f"again-{failed.name}").click().run()
        said = [e.value for e in at.error if "job" in e.value]  # the room refusal: at most 1 job per browser
        assert len(said) == 1 and "boom" not in said[0], [e.value for e in at.error]
        for _ in range(2):  # the panel redraws (every 2 s in a browser): the sentence stays
            at.run()
            assert [e.value for e in at.error if e.value in said] == said
