"""Folder names stay text on every page (issue 30 audit): a class folder named like a Markdown image is never
rendered as one -- in Diagnosis's set sentence (the conformal record's reason names classes), the Trainer's dataset
error (friendly_errors), and Compare. The CLI's JSON keeps the reason as it is."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace

from streamlit.testing.v1 import AppTest

from cxrdemo.config import TrainConfig
from cxrdemo.views import diagnosis as dv
from tests.helpers import fake_status, make_layout_dataset

# A folder name holds no '/': a relative image link is what a class folder can carry (the browser fetches it from
# the app's own address; with a host it reads ![x](http:127.0.0.1:9) in some browsers).
LINK = "![x](p.png)"
LIVE = re.compile(r"(?<!\\)!(?<!\\)\[")  # an image link Markdown would render
REPO = Path(__file__).resolve().parents[1]


def _rendered(at: AppTest) -> list[str]:
    """Every string a page hands to Streamlit's Markdown renderer."""
    return [str(e.value) for e in (*at.markdown, *at.caption, *at.error, *at.warning, *at.info, *at.success)]


def test_the_set_sentence_escapes_the_records_reason_and_the_json_keeps_it():
    reason = f"The class {LINK} has 3 validation images; a set at 90% needs 9."
    r = SimpleNamespace(prediction_set=lambda level: None, set_missing={0.9: reason})
    said = dv.set_sentence(r, 0.9)
    assert not LIVE.search(said) and "\\!\\[x\\]\\(p\\.png\\)" in said
    assert dv.set_note(r, 0.9) == reason  # predict's JSON: plain text, not Markdown


def test_the_trainer_shows_a_dataset_error_naming_the_folder_as_text(tmp_path, run_store, monkeypatch):
    ds = make_layout_dataset(tmp_path / "ds", {"NORMAL": 3})
    (ds / LINK).mkdir()  # a class folder without images: the scan's sentence names it
    at = AppTest.from_file(str(REPO / "app_pages" / "trainer.py"), default_timeout=60)
    at.run()
    at.radio(key="source").set_value("A folder on this computer").run()
    at.text_input(key="data_path").input(str(ds)).run()
    assert not at.exception, [e.value for e in at.exception]
    (error,) = [e.value for e in at.error]
    assert "contains no readable images" in error and "p\\.png" in error
    assert not any(LIVE.search(t) for t in _rendered(at))


def test_compare_shows_a_run_of_such_classes_as_text(tmp_path, run_store, monkeypatch):
    from cxrdemo.runs import store as runs

    for name, classes in (("a", [LINK, "NORMAL"]), ("b", ["NORMAL", "PNEUMONIA"])):
        d = runs.create_run(TrainConfig(data=str(tmp_path / LINK), epochs=2), run_store, name=name,
                            scan_summary={"name": LINK, "classes": classes})
        fake_status(d, state="failed", error=f"The class folder {tmp_path / LINK} contains no readable images.")
        time.sleep(0.01)
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(run_store))
    at = AppTest.from_file(str(REPO / "app_pages" / "compare.py"), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not any(LIVE.search(t) for t in _rendered(at))
