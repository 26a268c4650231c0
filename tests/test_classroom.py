"""Classroom mode: the policy (unit tests) and the Trainer and Compare pages on a networked server (AppTest)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cxrdemo.config import TrainConfig
from cxrdemo.errors import ConfigError, DatasetError
from cxrdemo.paths import DEMO_DATA_DIR
from cxrdemo.runs import jobs, policy
from cxrdemo.runs import store as runs
from cxrdemo.views import classroom as cls
from tests.helpers import fake_status, server_address

REPO = Path(__file__).resolve().parents[1]
TRAINER = str(REPO / "app_pages" / "trainer.py")
COMPARE = str(REPO / "app_pages" / "compare.py")
APP = str(REPO / "app.py")
PASS = "correct horse battery"
FOLDER = "A folder on this computer"


# ---------------------------------------------------------------- the policy

@pytest.mark.parametrize("address, networked", [
    (None, True), ("", True), ("0.0.0.0", True), ("::", True), ("192.168.1.20", True), ("classroom-pc", True),
    ("localhost", False), ("127.0.0.1", False), ("127.0.1.1", False), ("::1", False), ("[::1]", False)])
def test_only_a_loopback_address_is_a_desktop(address, networked):
    assert cls.is_networked(address, env={}) is networked


def test_classroom_can_be_forced_on_behind_a_proxy():
    assert cls.is_networked("localhost", env={cls.FORCE_ENV: "1"})
    assert cls.classroom("localhost", env={}) == cls.Classroom()


def test_limits_default_and_adjustable_by_the_teacher():
    assert cls.read_limits({}) == cls.Limits(10, 224, 6, 6)
    assert cls.read_limits({"CXRDEMO_CLASS_MAX_EPOCHS": "30", "CXRDEMO_CLASS_MAX_SWEEP": "12"}) == \
        cls.Limits(30, 224, 12, 6)
    with pytest.raises(ConfigError, match="CXRDEMO_CLASS_MAX_IMG_SIZE"):
        cls.read_limits({"CXRDEMO_CLASS_MAX_IMG_SIZE": "big"})


def test_data_roots_default_to_the_built_in_data(tmp_path):
    assert cls.data_roots({}) == (Path(os.path.realpath(DEMO_DATA_DIR)),)
    (tmp_path / "a").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    roots = cls.data_roots({cls.ROOTS_ENV: f"{tmp_path / 'link'}{os.pathsep}{tmp_path / 'b'}"})
    assert roots == (tmp_path.resolve() / "a", tmp_path.resolve() / "b")


def test_passphrase_is_checked_and_absent_means_no_teacher():
    assert cls.check_passphrase(PASS, PASS)
    assert not cls.check_passphrase(PASS + " ", PASS)
    assert not cls.check_passphrase("", "")
    assert not cls.check_passphrase("anything", "")
    assert cls.teacher_passphrase("from-secrets", env={}) == "from-secrets"
    assert cls.teacher_passphrase("from-secrets", env={cls.PASSPHRASE_ENV: "env"}) == "env"
    env = {cls.PASSPHRASE_ENV: PASS}
    assert cls.classroom("0.0.0.0", PASS, env=env).teacher
    assert cls.classroom("0.0.0.0", "guess", env=env).student


def test_refused_folders_all_say_the_same(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "empty").mkdir(parents=True)
    (allowed / "file.png").write_bytes(b"x")
    (allowed / "escape").symlink_to("/etc")  # a link out of the allow-list: checked after resolving it
    policy = cls.Classroom(on=True, roots=cls.data_roots({cls.ROOTS_ENV: str(allowed)}))
    for path in ("/etc", "/etc/passwd", str(tmp_path / "missing"), str(allowed / "missing"),
                 str(allowed / "file.png"), str(allowed / "escape"), str(allowed / ".." / "allowed" / ".." ),
                 "relative/folder", "\0"):
        with pytest.raises(DatasetError) as err:
            policy.check_folder(path)
        assert str(err.value) == cls.REFUSED, path
    assert policy.check_folder(str(allowed / "empty")) == str(allowed.resolve() / "empty")
    assert policy.check_folder("demo") == "demo"
    assert policy.check_folder("lesson:bacteria_virus") == "lesson:bacteria_virus"  # built-in sets by name
    assert cls.Classroom().check_folder("/etc") == "/etc"  # a desktop: any folder, as today


def test_student_limits_and_what_the_teacher_may_do(tmp_path):
    student = policy.Asker(classroom=True, roots=cls.data_roots({}))
    assert policy.recipe_refusal(student, TrainConfig(epochs=10, img_size=224)) is None
    words = cls.refusal_words(policy.recipe_refusal(student, TrainConfig(epochs=11)))
    assert "at most 10 epochs (this recipe has 11)" in words
    assert "at most 224 px (this recipe has 299)" in cls.refusal_words(policy.recipe_refusal(student,
                                                                                             TrainConfig(img_size=299)))
    assert policy.recipe_refusal(student, TrainConfig(data=str(tmp_path))).code == "folder"
    sweep = [TrainConfig(seed=k) for k in range(7)]
    assert policy.admission(student, tmp_path / "runs", sweep[:6], "sweep") is None
    assert "at most 6 runs (this one has 7)" in cls.refusal_words(policy.admission(student, tmp_path, sweep, "sweep"))
    view = cls.Classroom(on=True, roots=cls.data_roots({}))
    assert not view.may_delete() and not view.may_type_folders()

    teacher = policy.Asker(classroom=True, teacher=True, roots=cls.data_roots({}))
    assert policy.recipe_refusal(teacher, TrainConfig(epochs=200, img_size=512)) is None
    assert policy.admission(teacher, tmp_path, [TrainConfig(seed=k) for k in range(40)], "sweep") is None
    view = cls.Classroom(on=True, teacher=True, roots=cls.data_roots({}))
    assert view.may_delete() and view.may_type_folders()
    # the allow-list binds the teacher too, in words for the one who can change it
    assert cls.refusal_words(policy.recipe_refusal(teacher, TrainConfig(data=str(tmp_path)))) == cls.OUTSIDE_ROOTS


def test_jobs_are_counted_per_browser(tmp_path):
    me, other = cls.browser_tag("a" * 22), cls.browser_tag("b" * 22)
    assert me != other and len(me) == 16 and "a" * 22 not in me  # a hash, never the id itself
    root = tmp_path / "runs"
    for state, who in (("queued", me), ("running", me), ("completed", me), ("queued", other)):
        fake_status(runs.create_run(TrainConfig(), root, browser=who), state=state)
    student = policy.Asker(classroom=True, browser=me, limits=cls.Limits(max_jobs_per_browser=3))
    assert policy.active_jobs(root, me) == 2 and policy.room_left(student, root) == 1
    assert policy.admission(student, root, [TrainConfig()]) is None
    words = cls.refusal_words(policy.admission(student, root, [TrainConfig()] * 2))
    assert "already has 2 job(s) waiting or training" in words and "at most 3" in words
    teacher = policy.Asker(classroom=True, teacher=True, browser=me, limits=cls.Limits(max_jobs_per_browser=3))
    assert policy.admission(teacher, root, [TrainConfig()] * 9) is None
    assert cls.valid_browser_id(cls.new_browser_id()) and not cls.valid_browser_id("../x")


# ---------------------------------------------------------------- the pages on a networked server

@pytest.fixture
def networked(store, monkeypatch):
    """The app as `streamlit run app.py --server.address 0.0.0.0`, with a teacher passphrase set."""
    monkeypatch.setenv(cls.PASSPHRASE_ENV, PASS)
    for var in (cls.ROOTS_ENV, cls.FORCE_ENV, "CXRDEMO_CLASS_MAX_JOBS"):
        monkeypatch.delenv(var, raising=False)
    with server_address("0.0.0.0"):
        yield store


@pytest.fixture
def submitted(monkeypatch):
    """The real submit path without a process: the configs of the runs it would start."""
    configs: list[TrainConfig] = []

    def launch(d, root, max_jobs=None, backend="local"):
        configs.append(TrainConfig.from_dict(runs.load_run(d).config))

    monkeypatch.setattr(jobs, "launch", launch)
    return configs


def _run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _errors(at: AppTest) -> list[str]:
    """The errors as a reader sees them (a sentence is shown as text: its Markdown escapes removed)."""
    return [re.sub(r"\\(.)", r"\1", e.value) for e in at.error]


def _app(page: str) -> AppTest:
    """The whole app (router and its sidebar: the teacher's box) on one page."""
    at = _run(AppTest.from_file(APP, default_timeout=60))
    at.switch_page(page)
    return _run(at)


def _unlock(at: AppTest, passphrase: str = PASS) -> AppTest:
    at.text_input(key="teacher_passphrase").input(passphrase)
    return _run(at)


def test_refused_folder_paths_reveal_nothing(networked, monkeypatch, tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "empty").mkdir(parents=True)
    monkeypatch.setenv(cls.ROOTS_ENV, str(allowed))
    at = _app("app_pages/trainer.py")
    assert FOLDER not in at.radio(key="source").options  # a student types no paths
    _unlock(at)
    at.radio(key="source").set_value(FOLDER)
    _run(at)
    seen = {}
    for path in ("/etc", str(tmp_path / "missing"), str(allowed / "empty")):
        at.text_input(key="data_path").input(path)
        _run(at)
        seen[path] = _errors(at)
        assert at.button(key="start").disabled
        assert not at.dataframe  # no listing of anything
    # the teacher: told what to change, never what exists
    assert seen["/etc"] == seen[str(tmp_path / "missing")] == [cls.OUTSIDE_ROOTS]
    (empty,) = seen[str(allowed / "empty")]  # allowed: the ordinary sentence about the folder itself
    assert empty != cls.OUTSIDE_ROOTS and "no class folders" in empty


def test_student_gets_the_bounded_menu(networked, submitted, monkeypatch):
    monkeypatch.setenv("CXRDEMO_CLASS_MAX_JOBS", "1")
    at = _run(AppTest.from_file(TRAINER, default_timeout=60))
    sid = at.query_params["sid"]
    assert cls.valid_browser_id(sid if isinstance(sid, str) else sid[0])
    at.number_input(key="epochs").set_value(11)
    at.button(key="start").click()
    _run(at)
    assert any("at most 10 epochs" in e for e in _errors(at)) and not submitted
    at.number_input(key="epochs").set_value(3)
    at.selectbox(key="img_size").set_value(299)
    at.button(key="start").click()
    _run(at)
    assert any("at most 224 px" in e for e in _errors(at)) and not submitted
    at.selectbox(key="img_size").set_value(64)
    at.multiselect(key="sweep_backbones").set_value(["cnn8", "cnn5"])
    at.multiselect(key="sweep_freezes").set_value(["none", "head", "1", "2"])
    _run(at)
    at.button(key="sweep").click()
    _run(at)
    assert any("at most 6 runs (this one has 8)" in e for e in _errors(at)) and not submitted

    at.button(key="start").click()  # within the limits: queued, and counted for this browser
    _run(at)
    assert not _errors(at) and len(submitted) == 1
    (info,) = runs.list_runs(networked)
    assert info.meta["browser"] == cls.browser_tag(at.session_state["browser_id"])
    at.button(key="start").click()
    _run(at)
    assert any("each browser may have at most 1" in e for e in _errors(at)) and len(submitted) == 1


def test_teacher_passphrase_unlocks_larger_jobs(networked, submitted):
    at = _app("app_pages/trainer.py")
    _unlock(at, "not it")
    assert [e for e in _errors(at) if "not the teacher passphrase" in e]
    assert FOLDER not in at.radio(key="source").options
    _unlock(at)
    assert FOLDER in at.radio(key="source").options and not _errors(at)
    at.number_input(key="epochs").set_value(40)
    at.button(key="start").click()
    _run(at)
    assert not _errors(at) and [c.epochs for c in submitted] == [40]


def test_deleting_a_run_needs_the_teacher(networked):
    d = runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=2, img_size=64), networked)
    fake_status(d, state="failed", error="stopped")
    at = _app("app_pages/compare.py")
    at.toggle(key="everyone_runs").set_value(True)  # a run of no browser: everyone's
    _run(at)
    assert "delete_button" not in [b.key for b in at.button]
    assert any("deleting runs needs the teacher" in i.value for i in at.info)
    _unlock(at)
    at.checkbox(key="delete_confirm").check()
    _run(at)
    at.button(key="delete_button").click()
    _run(at)
    assert not d.exists()


def test_desktop_keeps_free_folder_paths(store, tmp_path):
    with server_address("localhost"):
        at = _run(AppTest.from_file(TRAINER, default_timeout=60))
        assert FOLDER in at.radio(key="source").options
        assert "teacher_passphrase" not in [t.key for t in at.text_input]
        at.radio(key="source").set_value(FOLDER)
        _run(at)
        at.text_input(key="data_path").input(str(tmp_path / "missing"))
        _run(at)
        assert any("does not exist" in e for e in _errors(at))


def test_sweep_checks_queue_room_before_queueing_any(store, submitted, monkeypatch, tiny_dataset):
    monkeypatch.setenv("CXRDEMO_MAX_QUEUED", "3")
    runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=1, img_size=64), store)  # one already waits
    with server_address("localhost"):  # a desktop: no classroom limit on the sweep itself
        at = _run(AppTest.from_file(TRAINER, default_timeout=60))
        at.multiselect(key="sweep_backbones").set_value(["cnn8", "cnn5"])
        at.multiselect(key="sweep_freezes").set_value(["none", "head"])
        _run(at)
        at.button(key="sweep").click()
        _run(at)
    assert any("The job queue is full: 1 job(s) are waiting and at most 3 may wait" in e for e in _errors(at))
    assert not submitted and len(runs.list_runs(store)) == 1  # none of the sweep was queued
