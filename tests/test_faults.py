"""Hardening (issue #8), faults: killed workers, app restarts, full disks, damaged runs, racing tabs, privacy.

Each test checks that the state stays truthful and the data readable. Related cases already covered
elsewhere: SIGKILL mid-epoch (tests/test_train.py::test_worker_killed_mid_epoch_leaves_readable_files,
tests/test_jobs.py::test_sigkilled_worker_reads_interrupted_and_is_reaped), an interrupted os.replace
(tests/test_runs.py::test_atomic_write_leaves_previous_file_when_interrupted), a malicious pickle in
model.pt refused by torch.load(weights_only=True) (tests/test_checkpoint.py::test_malicious_model_file_is_refused).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cxrdemo import fileio
from cxrdemo.cli import main as cli
from cxrdemo.diagnosis import predict
from cxrdemo.errors import RunError
from cxrdemo.model import checkpoint
from cxrdemo.runs import jobs
from cxrdemo.runs import store as runs
from cxrdemo.runs.worker import execute_run
from tests.helpers import make_split_dataset, tiny_config, wait_for
from tests.test_bad_input import GOOD, one_error_line, radiograph_like, tree_snapshot
from tests.test_imageio import make_dicom

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 90.0




@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return make_split_dataset(tmp_path_factory.mktemp("faults_data"), (5, 2, 2), 40)




tiny = partial(tiny_config, threads=1)


def final(root: Path, run_id: str) -> dict:
    wait_for(lambda: runs.read_status(root / run_id)["state"] in runs.FINAL)
    return runs.read_status(root / run_id)


# ---------------------------------------------------------------- killed mid-checkpoint-write

DIE_BEFORE_REPLACE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from cxrdemo.runs import worker
    real_replace = os.replace
    def replace(src, dst):
        # The new model.pt is complete in its temporary file; the power goes before it is moved into place.
        if str(dst).endswith("model.pt"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)
    os.replace = replace
    worker.execute_run(Path(sys.argv[1]))
""")


@pytest.mark.slow
def test_sigkill_during_the_model_write_leaves_no_model_without_its_decision(store, ds):
    # model.pt is written once, at the end, with its decision: the kill hits that one write.
    d = runs.create_run(tiny(ds, threshold="val"), store)
    proc = subprocess.run([sys.executable, "-c", DIE_BEFORE_REPLACE, str(d)], timeout=TIMEOUT_S,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    status = runs.read_status(d)
    assert status["state"] == "interrupted" and "stopped unexpectedly" in status["error"]
    assert not (d / "model.pt").exists()  # never a model without its decision
    assert checkpoint.load_best_epoch(d)[1] == 1  # the finished epoch is kept beside it
    assert list(runs.read_metrics(d)["epoch"]) == [1]
    leftovers = [p.name for p in d.iterdir() if p.name.endswith(".tmp")]
    assert all(p.startswith(".model.pt.") for p in leftovers)  # hidden, never under the real name
    assert jobs.reap(store) == [d.name]
    with pytest.raises(RunError, match="has no trained model yet"):
        predict.load_model(d.name, store)
    again = jobs.resubmit(d.name, store, max_jobs=1)  # "Start again"
    assert final(store, again)["state"] == "completed"
    decision = checkpoint.load(store / again / "model.pt").decision
    assert decision.rule == "val" and decision.value is not None
    assert not (store / again / checkpoint.BEST_EPOCH_FILE).exists()


# ---------------------------------------------------------------- the app restarts while jobs run

SUBMIT_AND_EXIT = textwrap.dedent("""
    import json, sys
    from cxrdemo.runs import jobs
    from cxrdemo.config import TrainConfig
    print(jobs.submit(TrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], max_jobs=1), flush=True)
""")


@pytest.mark.slow
def test_a_job_outlives_the_app_process_that_started_it(store, ds):
    cfg = tiny(ds, epochs=500).to_dict()
    app = subprocess.run([sys.executable, "-c", SUBMIT_AND_EXIT, json.dumps(cfg), str(store)], timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert app.returncode == 0, app.stderr
    run_id = app.stdout.strip()  # the "app" has exited; a new process (this one) looks at the store
    epochs = wait_for(lambda: len(runs.read_metrics_rows(store / run_id)) >= 1 and
                      [i for i in jobs.list_jobs(store) if i.run_id == run_id][0].status.get("epoch"))
    info = [i for i in jobs.list_jobs(store) if i.run_id == run_id][0]
    assert info.state == "running" and runs.pid_alive(info.status["pid"])
    wait_for(lambda: runs.read_status(store / run_id)["epoch"] > epochs)  # live, advancing
    assert jobs.cancel(run_id, store, grace_s=20)["state"] == "cancelled"
    assert len(runs.read_metrics(store / run_id)) >= 2
    assert checkpoint.load(store / run_id / "model.pt").epoch >= 1  # finished epochs are kept, with a decision


# ---------------------------------------------------------------- disk full, read-only store

def _fail_writes(monkeypatch, code: int, names: tuple[str, ...] | None = None) -> None:
    real = fileio.atomic_file  # every atomic write (JSON, CSV, model files) goes through it

    def failing(path):
        if names is None or Path(path).name in names:
            raise OSError(code, os.strerror(code), str(path))
        return real(path)
    monkeypatch.setattr(fileio, "atomic_file", failing)


@pytest.mark.slow
def test_disk_full_while_saving_fails_the_job_clearly_and_spares_earlier_runs(patch_store, ds, monkeypatch, capsys):
    earlier = tree_snapshot(patch_store.root)
    _fail_writes(monkeypatch, errno.ENOSPC, ("model.pt",))
    assert cli.main(["train", "--data", str(ds), "--backbone", "cnn8", "--img-size", "32", "--epochs", "1",
                     "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert "No space left on device" in one_error_line(err) and "disk full" in err
    run_id = out.strip()
    status = runs.read_status(patch_store.root / run_id)
    assert status["state"] == "failed" and "disk full" in status["error"]
    assert not (patch_store.root / run_id / "model.pt").exists()
    assert len(runs.read_metrics(patch_store.root / run_id)) == 1  # the finished epoch's row is intact
    after = tree_snapshot(patch_store.root)
    assert {k: v for k, v in after.items() if not k.startswith(run_id)} == earlier
    assert predict.load_model(patch_store.run.name).classes == ("blank", "patch")  # the earlier run still works


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_read_only_or_full_store_refuses_new_runs_with_a_sentence(patch_store, monkeypatch, capsys, code):
    earlier = tree_snapshot(patch_store.root)
    _fail_writes(monkeypatch, code)
    for argv in (["train", "--data", "demo", "--epochs", "1"], ["jobs", "submit", "--data", "demo"]):
        assert cli.main(argv) == 2
        out, err = capsys.readouterr()
        assert "Cannot write a new run" in one_error_line(err) and os.strerror(code) in err and not out
    after = {k: v for k, v in tree_snapshot(patch_store.root).items() if k != ".queue.lock"}  # the queue's lock
    assert after == {k: v for k, v in earlier.items() if k != ".queue.lock"}  # no half-made run folder


def test_runs_folder_that_is_a_file_is_a_sentence(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(tmp_path / "afile" / "runs"))
    assert cli.main(["train", "--data", "demo", "--epochs", "1"]) == 2
    assert "Not a directory" in one_error_line(capsys.readouterr().err)
    assert cli.main(["jobs", "list"]) == 0  # reading an absent store is not an error


def test_store_turning_read_only_mid_run_still_reports_failed(patch_store, ds, monkeypatch):
    d = runs.create_run(tiny(ds), patch_store.root)
    real = fileio.atomic_file

    def read_only_after_first_epoch(path):
        if (d / "metrics.csv").exists():  # from the first epoch's row on, nothing can be written, not even status
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path)
    monkeypatch.setattr(fileio, "atomic_file", read_only_after_first_epoch)
    status = execute_run(d)
    assert status["state"] == "failed" and "read-only" in status["error"]
    # status.json still holds the last state written; once the worker process is gone it reads 'interrupted'.
    assert runs.read_json(d / "status.json")["state"] == "running" and len(runs.read_metrics(d)) == 1


def test_store_read_only_before_the_run_starts_is_a_sentence_not_a_traceback(patch_store, ds, monkeypatch):
    d = runs.create_run(tiny(ds), patch_store.root)
    _fail_writes(monkeypatch, errno.EROFS)
    status = execute_run(d)
    assert status == {"state": "failed", "error": "Could not write the run's files (Read-only file system): is the "
                                                  "disk full or the folder read-only?"}
    assert runs.read_json(d / "status.json")["state"] == "queued"  # unchanged: it could not be written


# ---------------------------------------------------------------- one damaged run among good ones

@pytest.fixture
def damaged_store(patch_store):
    """The patch store with four more runs: garbage model.pt, garbage config.json, empty status.json, bad CSV."""
    bad_model = patch_store.add("badmodel")
    (bad_model / "model.pt").write_bytes(b"\x80\x02garbage" * 50)
    bad_config = patch_store.add("badconfig")
    (bad_config / "config.json").write_text('{"run_id": "x", "config": {')
    bad_status = patch_store.add("badstatus")
    (bad_status / "status.json").write_bytes(b"")
    bad_csv = patch_store.add("badcsv")
    (bad_csv / "metrics.csv").write_bytes(b"\xff\xfe\x00garbage\n\x00\x00")
    patch_store.bad = {"model": bad_model.name, "config": bad_config.name, "status": bad_status.name,
                       "csv": bad_csv.name}
    return patch_store


def test_damaged_runs_are_listed_and_every_other_run_works(damaged_store, capsys, tmp_path):
    bad = damaged_store.bad
    states = {i.run_id: i.state for i in jobs.list_jobs(damaged_store.root)}
    assert states[bad["config"]] == states[bad["status"]] == "damaged"
    assert states[bad["model"]] == states[bad["csv"]] == states[damaged_store.run.name] == "completed"
    with pytest.raises(RunError, match="damaged or unsafe"):
        predict.load_model(bad["model"])
    assert runs.read_metrics(damaged_store.root / bad["csv"]).empty
    (tmp_path / "x.png").write_bytes(GOOD)
    assert cli.main(["predict", "--run", bad["model"], str(tmp_path / "x.png")]) == 2
    assert "damaged" in one_error_line(capsys.readouterr().err)
    for good in (damaged_store.run.name, bad["csv"]):
        assert cli.main(["predict", "--run", good, str(tmp_path / "x.png")]) == 0
        assert json.loads(capsys.readouterr().out)["class"] in ("blank", "patch")
    assert cli.main(["jobs", "list"]) == 0
    listing = capsys.readouterr().out
    assert all(r in listing for r in bad.values())


def test_compare_page_renders_with_damaged_runs(damaged_store):
    at = AppTest.from_file(str(REPO / "app_pages" / "compare.py"), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    damaged = set(table.loc[table["status"] == "damaged", "run_id"])
    assert damaged == {damaged_store.bad["config"], damaged_store.bad["status"]}
    assert damaged_store.run.name in set(table["run_id"])


@pytest.mark.slow
def test_diagnosis_page_offers_the_good_models_when_one_is_damaged(damaged_store):
    from cxrdemo.views import words

    choices = words.model_choices()
    assert damaged_store.bad["config"] not in choices.values() and damaged_store.bad["status"] not in choices.values()
    at = AppTest.from_file(str(REPO / "app_pages" / "diagnosis.py"), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    label = next(lb for lb, r in choices.items() if r == damaged_store.bad["model"])
    at.selectbox(key="model").set_value(label).run()
    assert not at.exception and any("damaged" in e.value for e in at.error)
    label = next(lb for lb, r in choices.items() if r == damaged_store.run.name)
    at.selectbox(key="model").set_value(label).run()
    at.file_uploader[0].set_value(("x.png", GOOD, "image/png"))
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Prediction:" in m.value for m in at.markdown)


# ---------------------------------------------------------------- two tabs racing

@pytest.mark.slow
def test_two_tabs_submitting_and_cancelling_each_other_lose_and_duplicate_nothing(store, ds):
    mine: dict[str, list[str]] = {"A": [], "B": []}
    inbox: dict[str, queue.Queue] = {"A": queue.Queue(), "B": queue.Queue()}
    errors: list[BaseException] = []
    results: list[tuple[str, str]] = []

    def tab(me: str, other: str) -> None:
        try:
            for k in range(3):
                run_id = jobs.submit(tiny(ds, seed=k), store, name=f"tab{me}", max_jobs=1)
                mine[me].append(run_id)
                inbox[other].put(run_id)
            for _ in range(2):  # cancel the other tab's first two jobs, as they arrive
                victim = inbox[me].get(timeout=30)
                try:
                    results.append((victim, jobs.cancel(victim, store, grace_s=20)["state"]))
                except RunError as exc:  # it had already finished: a sentence, not a crash
                    results.append((victim, str(exc)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=tab, args=("A", "B")), threading.Thread(target=tab, args=("B", "A"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    all_ids = mine["A"] + mine["B"]
    assert len(all_ids) == 6 and len(set(all_ids)) == 6
    assert sorted(i.run_id for i in runs.list_runs(store)) == sorted(all_ids)  # none lost, none extra
    cancelled = {v for v, s in results}
    assert cancelled == set(mine["A"][:2] + mine["B"][:2])
    statuses = {i: final(store, i) for i in all_ids}
    for run_id in cancelled:
        assert statuses[run_id]["state"] in ("cancelled", "completed")  # completed only if it won the race
    survivors = [mine["A"][2], mine["B"][2]]
    assert all(statuses[i]["state"] == "completed" for i in survivors)
    started = sorted((s["started"], i) for i, s in statuses.items() if s.get("started"))
    created = {i: runs.read_json(store / i / "config.json")["created"] for i in all_ids}
    assert [i for _, i in started] == sorted((i for _, i in started), key=lambda i: (created[i], i))  # FIFO kept
    spans = sorted((s["started"], s["finished"]) for s in statuses.values() if s.get("started"))
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:]))  # one slot: never two at once
    wait_for(lambda: jobs.poll_children() == 0, timeout=20)  # no zombies


def test_the_same_queued_job_cancelled_from_two_tabs_at_once(store, ds):
    d = runs.create_run(tiny(ds), store)
    runs.write_status(d, pid=os.getpid(), heartbeat=time.time())  # a live waiting worker (this process)
    out: list = []
    barrier = threading.Barrier(4)

    def cancel():
        barrier.wait()
        try:
            out.append(jobs.cancel(d.name, store)["state"])
        except RunError as exc:
            out.append(str(exc))
    threads = [threading.Thread(target=cancel) for _ in range(4)]
    [t.start() for t in threads]
    [t.join(10) for t in threads]
    assert out.count("cancelled") == 1 and all("nothing to cancel" in o for o in out if o != "cancelled")
    assert runs.read_status(d)["state"] == "cancelled"


# ---------------------------------------------------------------- privacy: no identifier on disk or in logs

IDENTIFIERS = ("DOE^JANE", "DOE", "JANE", "MRN-4455667", "St Elsewhere")


def _all_text_under(*roots: Path) -> bytes:
    blob = b""
    for root in roots:
        for p in root.rglob("*") if root.exists() else []:
            if p.is_file():
                blob += p.name.encode() + b"\0" + p.read_bytes()
    return blob


@pytest.mark.slow
def test_dicom_identifiers_never_reach_disk_or_logs(patch_store, tmp_path, caplog, capsys, monkeypatch):
    dicom = make_dicom(radiograph_like().astype(np.uint16) * 16, bits=12, PatientName="DOE^JANE",
                       PatientID="MRN-4455667", InstitutionName="St Elsewhere")
    upload = tmp_path / "upload" / "chest.dcm"
    upload.parent.mkdir()
    upload.write_bytes(dicom)
    cache = Path(os.environ["CXRDEMO_CACHE_DIR"])
    before = tree_snapshot(patch_store.root)
    caplog.set_level(logging.DEBUG)
    # The Diagnosis page: upload, prediction and heatmap, with every model-comparison control touched.
    at = AppTest.from_file(str(REPO / "app_pages" / "diagnosis.py"), default_timeout=60)
    at.run()
    at.file_uploader[0].set_value(("chest.dcm", dicom, "application/dicom"))
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Prediction:" in m.value for m in at.markdown)
    page_text = " ".join(str(e.value) for e in [*at.markdown, *at.caption, *at.warning, *at.info])
    # The command line, with a heatmap file written where the user asked.
    cam = tmp_path / "out" / "cam.png"
    cam.parent.mkdir()
    assert cli.main(["predict", "--run", patch_store.run.name, "--cam", str(cam), str(upload)]) == 0
    out, err = capsys.readouterr()
    assert tree_snapshot(patch_store.root) == before  # nothing written into the run store
    seen = _all_text_under(patch_store.root, cache, cam.parent) + out.encode() + err.encode() + page_text.encode()
    seen += "\n".join(r.getMessage() for r in caplog.records).encode()
    for ident in IDENTIFIERS:
        assert ident.encode() not in seen, ident
    assert b"DOE^JANE" in dicom  # the test file did carry the identifiers
