"""One classroom policy at the queue (issue 30): every entry point x every limit, as a student; desktop unchanged.

Entry points: the Trainer's Start (jobs.submit), a sweep (jobs.submit_all), "start again" (jobs.resubmit),
a lesson (lessons.start), the CAM scorecard (scorecard_job.submit) and the CLI `jobs submit` with
CXRDEMO_CLASSROOM=1. No process is started: jobs._spawn is replaced by a recorder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrdemo import paths
from cxrdemo.cli import main as cli
from cxrdemo.config import TrainConfig
from cxrdemo.errors import RunError
from cxrdemo.model import checkpoint
from cxrdemo.runs import jobs, lifecycle, policy
from cxrdemo.runs import store as runs
from cxrdemo.diagnosis import scorecard_job
from cxrdemo.views import classroom as cls
from cxrdemo.views import lessons
from tests.helpers import fake_status

ME = policy.browser_tag("student-browser-0001")
OTHER = policy.browser_tag("another-browser-002")
LESSON = lessons.LESSONS["shortcut"]  # 3 runs of 8 epochs at 128 px on a built-in set
ENTRIES = ("trainer", "sweep", "again", "lesson", "scorecard", "cli")
# limit -> (environment, what the recipe of the attempt has): each limit set just below the attempt
LIMITS = {
    "epochs": ({"CXRDEMO_CLASS_MAX_EPOCHS": "3"}, {"epochs": 4}),
    "img_size": ({"CXRDEMO_CLASS_MAX_IMG_SIZE": "64"}, {"img_size": 96}),
    "group": ({"CXRDEMO_CLASS_MAX_SWEEP": "2"}, {}),
    "room": ({"CXRDEMO_CLASS_MAX_JOBS": "2"}, {}),
    "queue": ({"CXRDEMO_MAX_QUEUED": "2"}, {}),
    "folder": ({}, {"data": "OUTSIDE"}),
}
# What does not apply: a single job has no group size, a scorecard no recipe, a lesson reads only built-in sets.
NOT_APPLICABLE = {("trainer", "group"), ("again", "group"), ("scorecard", "group"), ("cli", "group"),
                  ("scorecard", "epochs"), ("scorecard", "img_size"), ("lesson", "folder")}
MATRIX = [(e, lim) for e in ENTRIES for lim in LIMITS if (e, lim) not in NOT_APPLICABLE]


@pytest.fixture
def spawned(monkeypatch):
    """jobs._spawn recording the job folders it would start (no process)."""
    started: list[Path] = []
    monkeypatch.setattr(jobs, "_spawn", lambda d, root, max_jobs, what="training": started.append(Path(d)))
    return started


@pytest.fixture
def room(store, tmp_path, monkeypatch):
    """A classroom environment: the allow-list is one folder; limits from the environment."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    for var in (*policy.LIMIT_ENV.values(), "CXRDEMO_MAX_QUEUED", paths.FORCE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(paths.ROOTS_ENV, str(allowed))
    return {"store": store, "outside": str(outside)}


def _recipe(case: dict, room: dict) -> TrainConfig:
    values = {"data": "demo", "backbone": "cnn8", "epochs": 2, "img_size": 32, **case}
    if values["data"] == "OUTSIDE":
        values["data"] = room["outside"]
    return TrainConfig(**values)


def _student(browser: str = ME) -> policy.Asker:
    return policy.Asker(classroom=True, browser=browser, limits=policy.read_limits(), roots=policy.data_roots())


def _completed_run(root: Path, config: TrainConfig) -> Path:
    d = runs.create_run(config, root, browser=OTHER)
    fake_status(d, state="completed")
    checkpoint.model_path(d).write_bytes(b"weights")
    return d


def _enter(entry: str, root: Path, asker: policy.Asker, config: TrainConfig, limit: str, monkeypatch) -> int:
    """Queue through one entry point; returns the CLI's exit code (0 for the others, which raise)."""
    if entry == "trainer":
        jobs.submit(config, root, asker=asker)
    elif entry == "sweep":
        n = 3 if limit == "group" else 2
        jobs.submit_all([(config.replace(seed=k), "sweep") for k in range(n)], root, asker=asker, kind="sweep")
    elif entry == "again":
        old = runs.create_run(config, root, browser=OTHER)  # the teacher's run, failed: "Start again" on it
        fake_status(old, state="failed", error="stopped")
        jobs.resubmit(old.name, root, asker=asker)
    elif entry == "lesson":
        lessons.start(LESSON, root, asker)
    elif entry == "scorecard":
        run = _completed_run(root, TrainConfig(data="demo", backbone="cnn8", img_size=32))
        scorecard_job.submit(run.name, root, asker=asker, data=config.data if limit == "folder" else "")
    elif entry == "cli":
        if asker.classroom:
            monkeypatch.setenv(paths.FORCE_ENV, "1")
        return cli.main(["jobs", "submit", "--runs-dir", str(root), "--data", config.data, "--backbone", "cnn8",
                         "--epochs", str(config.epochs), "--img-size", str(config.img_size)])
    return 0


def _setup(limit: str, entry: str, room: dict, monkeypatch) -> tuple[TrainConfig, policy.Asker]:
    env, case = LIMITS[limit]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if entry == "lesson" and limit in ("epochs", "img_size"):
        monkeypatch.setenv(*{"epochs": ("CXRDEMO_CLASS_MAX_EPOCHS", "7"), "img_size": ("CXRDEMO_CLASS_MAX_IMG_SIZE",
                                                                                     "96")}[limit])
    asker = _student(policy.browser_tag(policy.CLI_BROWSER) if entry == "cli" else ME)
    root = room["store"]
    if limit == "room":  # this browser already has its 2 jobs waiting or training
        for state in ("queued", "running"):
            fake_status(runs.create_run(_recipe({}, room), root, browser=asker.browser), state=state, pid=None,
                        heartbeat=9e12)
    if limit == "queue":  # two jobs of another browser wait: the store-wide cap (desktop too)
        for _ in range(2):
            runs.create_run(_recipe({}, room), root, browser=OTHER)
    return _recipe(case, room), asker


def _jobs_in(root: Path) -> int:
    return policy.active_jobs(root)


@pytest.mark.parametrize("entry, limit", MATRIX)
def test_every_entry_point_holds_every_limit_for_a_student(entry, limit, room, spawned, monkeypatch, capsys):
    config, asker = _setup(limit, entry, room, monkeypatch)
    root = room["store"]
    before = _jobs_in(root)
    if entry == "cli":
        assert _enter(entry, root, asker, config, limit, monkeypatch) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        said = err
    else:
        with pytest.raises(RunError) as refused:
            _enter(entry, root, asker, config, limit, monkeypatch)
        exc = refused.value
        said = cls.refusal_words(exc.refusal) if isinstance(exc, policy.Refused) else str(exc)
        if limit != "queue":
            assert isinstance(exc, policy.Refused) and exc.refusal.code == ("img_size" if limit == "img_size"
                                                                            else limit)
    words = {"epochs": "epochs", "img_size": " px", "group": "at most 2", "room": "at most 2",
             "queue": "The job queue is full", "folder": cls.REFUSED}[limit]
    assert words in said, said
    assert _jobs_in(root) == before and not spawned  # nothing queued, nothing started: all or nothing


@pytest.mark.parametrize("entry", ENTRIES)
def test_every_entry_point_records_the_browser(entry, room, spawned, monkeypatch):
    root = room["store"]
    asker = _student(policy.browser_tag(policy.CLI_BROWSER) if entry == "cli" else ME)
    assert _enter(entry, root, asker, _recipe({}, room), "", monkeypatch) == 0
    assert spawned
    for d in spawned:
        if d.name == scorecard_job.KIND:
            assert lifecycle.read_status(d)["browser"] == asker.browser
        else:
            assert runs.load_run(d).meta["browser"] == asker.browser
    # and they count: this browser's room shrinks by what was queued
    assert policy.room_left(asker, root) == 6 - len(spawned)


@pytest.mark.parametrize("entry, limit", [m for m in MATRIX if m[1] != "queue"])
def test_desktop_is_unchanged(entry, limit, room, spawned, monkeypatch):
    config, _ = _setup(limit, entry, room, monkeypatch)
    assert _enter(entry, room["store"], policy.DESKTOP, config, limit, monkeypatch) == 0
    assert spawned


def test_the_teacher_passes_every_limit_but_the_allow_list(room, spawned, monkeypatch):
    for var, value in (("CXRDEMO_CLASS_MAX_JOBS", "1"), ("CXRDEMO_CLASS_MAX_SWEEP", "2"),
                       ("CXRDEMO_CLASS_MAX_EPOCHS", "3"), ("CXRDEMO_CLASS_MAX_IMG_SIZE", "64")):
        monkeypatch.setenv(var, value)
    teacher = policy.Asker(classroom=True, teacher=True, browser=ME, limits=policy.read_limits(),
                           roots=policy.data_roots())
    ids = lessons.start(LESSON, room["store"], teacher)  # 3 runs of 8 epochs at 128 px: over every limit
    assert len(ids) == 3 == len(spawned)
    with pytest.raises(policy.Refused) as refused:
        jobs.submit(_recipe({"data": "OUTSIDE"}, room), room["store"], asker=teacher)
    assert cls.refusal_words(refused.value.refusal) == cls.OUTSIDE_ROOTS  # worded for the one who can change it


def test_a_lesson_that_does_not_fit_says_so_before_the_click(room, spawned):
    root = room["store"]
    student = _student()
    words = cls.Classroom(on=True, limits=student.limits, roots=student.roots, browser=ME).refusal(
        root, [r.config for r in lessons.recipes(lessons.LESSONS["transfer"])], "lesson")
    assert words.startswith("This lesson needs 9 runs; in classroom mode one click may queue at most 6")
    for _ in range(4):
        runs.create_run(_recipe({}, room), root, browser=ME)
    words = cls.Classroom(on=True, limits=student.limits, roots=student.roots, browser=ME).refusal(
        root, [r.config for r in lessons.recipes(LESSON)], "lesson")
    assert words.startswith("This lesson needs 3 runs, and this browser may queue 2 more now")


def test_two_tabs_cannot_both_take_the_last_place(room, spawned, monkeypatch):
    import threading

    monkeypatch.setenv("CXRDEMO_CLASS_MAX_JOBS", "1")
    results: list[str] = []

    def click() -> None:
        try:
            results.append(jobs.submit(_recipe({}, room), room["store"], asker=_student()))
        except policy.Refused:
            results.append("refused")

    tabs = [threading.Thread(target=click) for _ in range(4)]
    for t in tabs:
        t.start()
    for t in tabs:
        t.join()
    assert results.count("refused") == 3 and policy.active_jobs(room["store"], ME) == 1


def test_workers_never_receive_the_passphrase(room, monkeypatch):
    from cxrdemo.runs import ray_backend

    monkeypatch.setenv(policy.PASSPHRASE_ENV, "correct horse battery")
    assert policy.PASSPHRASE_ENV not in jobs.worker_env(room["store"], 1)
    assert policy.PASSPHRASE_ENV not in ray_backend.job_env(2.0)
    assert "CXRDEMO_RUNS_DIR" in jobs.worker_env(room["store"], 1)
