"""Every scan stays inside a classroom's allowed folders (issue 30 audit), not only the Trainer's: `scan`,
`evaluate`, `calibrate`, `cam-scorecard` and `train` on the command line of a classroom ($CXRDEMO_CLASSROOM=1), and
a scorecard job queued by a page (its job.json carries the roots, as a run's config.json does). A folder outside the
roots, or a split folder inside one that links out of them, is refused with one sentence; the CLI exits 2."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cxrdemo import paths
from cxrdemo.cli.main import main
from cxrdemo.data import scan
from cxrdemo.runs import jobs, lifecycle, policy
from cxrdemo.views import classroom as cls
from tests.helpers import make_layout_dataset

DEMO = Path(__file__).resolve().parents[1] / "weights" / "demo"
needs_demo = pytest.mark.skipif(not (DEMO / "model.pt").is_file(), reason="needs the shipped demo model")
SPLITS = {"train/NORMAL": 4, "train/PNEUMONIA": 4, "val/NORMAL": 2, "val/PNEUMONIA": 2, "test/NORMAL": 2,
          "test/PNEUMONIA": 2}
LINKED = "The test folder of this dataset is a link to a folder outside the ones allowed in classroom mode"


@pytest.fixture
def classroom(tmp_path, run_store, monkeypatch):
    """A classroom command line: allowed/ (with a set whose test split links out) and outside/ (a whole set)."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    make_layout_dataset(outside / "ds", SPLITS)
    linked = make_layout_dataset(allowed / "linked", {k: v for k, v in SPLITS.items() if not k.startswith("test")})
    os.symlink(outside / "ds" / "test", linked / "test")
    monkeypatch.setenv(paths.FORCE_ENV, "1")
    monkeypatch.setenv(paths.ROOTS_ENV, str(allowed))
    for var in policy.LIMIT_ENV.values():
        monkeypatch.delenv(var, raising=False)
    return {"outside": str(outside / "ds"), "linked": str(linked)}


def _model(tmp_path) -> str:
    run = tmp_path / "demo-copy"  # a run folder given by path: calibrate would rewrite its model.pt
    shutil.copytree(DEMO, run)
    return str(run)


COMMANDS = {
    "scan": lambda run, data: ["scan", data],
    "evaluate": lambda run, data: ["evaluate", "--run", run, "--data", data, "--out", os.devnull],
    "calibrate": lambda run, data: ["calibrate", "--run", run, "--data", data, "--quiet"],
    "cam-scorecard": lambda run, data: ["cam-scorecard", "--run", run, "--data", data, "--n", "1", "--methods",
                                        "GradCAM", "--no-write"],
    "train": lambda run, data: ["train", "--data", data, "--backbone", "cnn8", "--img-size", "32", "--epochs", "1",
                                "--quiet"],
}


@needs_demo
@pytest.mark.parametrize("where", ["outside", "linked"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_that_scans_refuses_a_folder_outside_the_roots(classroom, tmp_path, run_store, capsys,
                                                                    command, where):
    argv = COMMANDS[command](_model(tmp_path) if command != "scan" else "", classroom[where])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    if where == "outside":
        assert err == f"error: {cls.OUTSIDE_ROOTS}\n"
    else:
        assert err.startswith(f"error: {LINKED}") and str(tmp_path / "outside") not in err  # nor its target
    assert not list(run_store.glob("*/config.json"))  # train refuses before a run is made


def test_the_built_in_sets_and_a_desktop_are_not_fenced(classroom, monkeypatch):
    assert scan.scan_dataset("demo").classes == ("NORMAL", "PNEUMONIA")
    assert scan.scan_dataset(paths.DEMO_DATA_DIR).classes == ("NORMAL", "PNEUMONIA")  # the demo set by its path
    monkeypatch.delenv(paths.FORCE_ENV)
    assert len(scan.scan_dataset(classroom["linked"]).splits["test"]) == 4  # a desktop follows links as before
    assert scan.scan_dataset(classroom["outside"]).classes == ("NORMAL", "PNEUMONIA")


@needs_demo
def test_a_scorecard_job_queued_by_a_page_scans_inside_the_roots_in_its_worker(classroom, tmp_path, run_store,
                                                                               monkeypatch):
    # a page's classroom (bound to a network address): nothing in the worker's environment says so
    monkeypatch.delenv(paths.FORCE_ENV)
    shutil.copytree(DEMO, run_store / "r1")
    monkeypatch.setattr(jobs, "_spawn", lambda *a, **k: None)
    from cxrdemo.diagnosis import scorecard_job

    teacher = policy.Asker(classroom=True, teacher=True, browser="b", roots=(tmp_path / "allowed",))
    d = scorecard_job.submit("r1", run_store, asker=teacher, n=1, data=classroom["linked"], methods=["GradCAM"])
    assert scorecard_job.execute(d)["state"] == "failed"
    assert lifecycle.read_status(d)["error"].startswith(LINKED)
