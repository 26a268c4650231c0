"""The teacher stays signed in (issue 30): unlock once per browser, across pages and a reload; Lock; wrong
passphrases rate-limited and logged; the pages pass the student to the queue (Lessons, start again)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cxrdemo.config import TrainConfig
from cxrdemo.runs import jobs, policy
from cxrdemo.runs import store as runs
from cxrdemo.views import classroom as cls
from tests.helpers import fake_status, page_browser, server_address

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PASS = "correct horse battery"


@pytest.fixture
def networked(store, monkeypatch):
    monkeypatch.setenv(cls.PASSPHRASE_ENV, PASS)
    for var in (cls.ROOTS_ENV, cls.FORCE_ENV, *policy.LIMIT_ENV.values()):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cls, "TRIES", cls.Tries())  # a fresh count per test
    monkeypatch.setattr(jobs, "launch", lambda d, root, max_jobs=None, backend="local": None)
    with server_address("0.0.0.0"):
        yield store


def _run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _app(page: str, query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    _run(at)
    at.switch_page(page)
    return _run(at)


def _teacher(at: AppTest) -> bool:
    return any("Teacher" in s.value for s in at.sidebar.success)


def test_token_is_signed_expiring_and_bound_to_the_browser():
    token = cls.teacher_token(PASS, "browser-a", now=1000.0, ttl_s=60)
    assert PASS not in token
    assert cls.token_valid(token, PASS, "browser-a", now=1059.0)
    assert not cls.token_valid(token, PASS, "browser-a", now=1061.0)  # expired
    assert not cls.token_valid(token, PASS, "browser-b", now=1000.0)  # another browser (or machine)
    assert not cls.token_valid(token, PASS + "x", "browser-a", now=1000.0)  # the passphrase changed
    expires, sig = token.split(".")
    assert not cls.token_valid(f"{int(expires) + 3600}.{sig}", PASS, "browser-a", now=1000.0)  # a longer forgery
    for bad in (None, "", "abc", "x.y", f"{expires}.", "." + sig):
        assert not cls.token_valid(bad, PASS, "browser-a", now=1000.0)


def test_unlock_holds_across_pages_and_a_reload_until_lock(networked):
    d = runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=2, img_size=64), networked)
    fake_status(d, state="failed", error="stopped")
    at = _app("app_pages/trainer.py")
    assert not _teacher(at)
    at.text_input(key="teacher_passphrase").input(PASS)
    _run(at)
    assert _teacher(at) and "A folder on this computer" in at.radio(key="source").options
    token, sid = at.query_params["teacher"], at.query_params["sid"]
    token, sid = (token if isinstance(token, str) else token[0]), (sid if isinstance(sid, str) else sid[0])
    assert PASS not in token
    at.switch_page("app_pages/compare.py")  # another page: no passphrase asked, deleting allowed
    _run(at)
    at.toggle(key="everyone_runs").set_value(True)  # the run of no browser: everyone's
    _run(at)
    assert _teacher(at) and not any("needs the teacher" in i.value for i in at.info)
    at.checkbox(key="delete_confirm").check()
    _run(at)
    at.button(key="delete_button").click()
    _run(at)
    assert not d.exists()

    reloaded = _app("app_pages/lessons.py", {"sid": sid, "teacher": token})  # a reload: a new session
    assert _teacher(reloaded)
    stranger = _app("app_pages/lessons.py", {"teacher": token})  # the address without this browser's id
    assert not _teacher(stranger)

    at.button(key="teacher_lock").click()
    _run(at)
    assert not _teacher(at) and "teacher" not in at.query_params
    assert "A folder on this computer" not in (at.radio(key="source").options if at.radio else [])


def test_wrong_passphrases_are_rate_limited_and_logged(networked, caplog):
    at = _app("app_pages/trainer.py")
    caplog.set_level(logging.WARNING, logger="cxrdemo.classroom")
    for k in range(cls.MAX_TRIES):
        at.text_input(key="teacher_passphrase").input(f"guess {k}")
        _run(at)
        assert [e.value for e in at.sidebar.error] == ["That is not the teacher passphrase."]
    at.text_input(key="teacher_passphrase").input(PASS)  # even the right one waits now
    _run(at)
    (said,) = [e.value for e in at.sidebar.error]
    assert said.startswith("Too many wrong passphrases: 5 tries a minute are allowed. Try again in about")
    assert not _teacher(at)
    logged = [r.getMessage() for r in caplog.records if r.name == "cxrdemo.classroom"]
    assert len(logged) == cls.MAX_TRIES and not any("guess" in m for m in logged)  # never what was typed
    assert cls.TRIES.wait_s("anyone-else") == 0


def test_the_tries_window_passes():
    tries = cls.Tries()
    for _ in range(cls.MAX_TRIES):
        tries.failed("b", now=100.0)
    assert tries.wait_s("b", now=130.0) == pytest.approx(30.0)
    assert tries.wait_s("b", now=161.0) == 0


def test_lessons_page_says_before_the_click_and_queues_only_what_fits(networked, monkeypatch):
    at = _app("app_pages/lessons.py")
    captions = " ".join(c.value for c in at.caption)
    assert "This lesson needs 9 runs; in classroom mode one click may queue at most 6" in captions
    assert "In classroom mode a job may have at most 10 epochs; this lesson has a run of 24 epochs" not in captions
    (transfer,) = [b for b in at.button if b.key == "start-transfer"]
    assert transfer.disabled
    monkeypatch.setenv("CXRDEMO_CLASS_MAX_JOBS", "2")
    at = _app("app_pages/lessons.py")
    assert "This lesson needs 3 runs, and this browser may queue 2 more now" in " ".join(c.value for c in at.caption)
    assert at.button(key="start-shortcut").disabled and not runs.list_runs(networked)


def test_start_again_refusal_stays_on_the_panel(networked, monkeypatch):
    big = runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=40, img_size=64), networked)
    fake_status(big, state="failed", error="stopped")
    at = _app("app_pages/trainer.py")
    at.toggle(key="everyone_jobs").set_value(True)  # the teacher's run: among everyone's jobs
    _run(at)
    at.button(key=f"again-{big.name}").click()
    _run(at)
    assert any("at most 10 epochs (this recipe has 40)" in e.value.replace("\\", "") for e in at.error)
    _run(at)  # the panel redraws (every 2 s in a browser): the sentence is still there
    assert any("at most 10 epochs (this recipe has 40)" in e.value.replace("\\", "") for e in at.error)
    assert len(runs.list_runs(networked)) == 1


def test_students_see_their_own_work_first_and_no_server_path(networked, monkeypatch):
    at = _app("app_pages/trainer.py")
    me = page_browser(at)
    mine = runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=2, img_size=64), networked, name="mine",
                           browser=me)
    theirs = runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=2, img_size=64), networked,
                             name="theirs", browser=policy.browser_tag("someone-else-0001"))
    for d in (mine, theirs):
        fake_status(d, state="failed", error="stopped")
    _run(at)
    shown = " ".join(m.value for m in at.markdown)
    assert mine.name in shown and theirs.name not in shown
    at.toggle(key="everyone_jobs").set_value(True)
    _run(at)
    shown = " ".join(m.value for m in at.markdown)
    assert shown.index(mine.name) < shown.index(theirs.name)  # own first, then everyone's

    at.switch_page("app_pages/compare.py")
    _run(at)
    def labels():
        return [o.split(" · ")[0] for o in at.multiselect(key="chosen").options]

    assert labels() == ["mine"]
    at.toggle(key="everyone_runs").set_value(True)
    _run(at)
    assert labels() == ["mine", "theirs"]
    page = " ".join(str(e.value) for e in (*at.markdown, *at.info, *at.caption, *at.warning))
    assert str(networked) not in page


def test_the_imagenet_note_names_no_server_folder_to_a_student(monkeypatch, tmp_path):
    from cxrdemo import paths
    from cxrdemo.views import trainer_form as form

    monkeypatch.setenv("CXRDEMO_WEIGHTS_DIR", str(tmp_path / "secret-weights"))
    assert str(paths.weights_dir()) in form.imagenet_note("resnet18")
    assert "secret-weights" not in form.imagenet_note("resnet18", show_paths=False)
