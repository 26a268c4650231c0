"""Diagnosis's worklist through AppTest: several films at once, the table read off each film's one result, a row
that opens the single view with the same answer, and the downloads."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cxrdemo import paths
from cxrdemo.diagnosis import predict, result
from cxrdemo.views import numbers
from cxrdemo.views import worklist as wv

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "diagnosis.py")
FILMS = sorted((paths.PACKAGE_DIR / "demo_data" / "test").glob("*/*"))


@pytest.fixture
def page(monkeypatch, tmp_path) -> AppTest:
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(tmp_path / "runs"))  # the shipped demo model only
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.run()
    at.radio(key="worklist_mode").set_value(wv.MODES[1]).run()
    assert not at.exception, at.exception
    return at


def _table(at: AppTest):
    (df,) = [d for d in at.dataframe if d.key and d.key.startswith("worklist_table_")]
    return df


def test_five_films_at_once_give_a_table_and_a_click_opens_one(page):
    at = page
    assert not [n for n in at.number_input if n.key == "age"]  # one typed age fits no worklist
    up = at.file_uploader(key="worklist_upload_Files")
    assert up.accept_multiple_files
    doubtful = next(f for f in FILMS if f.name == "IM-0608-0001-0001.jpg")  # the demo model answers "both"
    chosen = [FILMS[0], doubtful, FILMS[11], FILMS[-1]]
    for f in chosen:
        up.upload(f.name, f.read_bytes(), "image/jpeg")
    up.upload("notes.png", b"not an image at all, just a note\n", "image/png")
    at.run()
    assert not at.exception, at.exception
    assert "4 films read: 1 needs a look, 1 could not be read." in [c.value for c in at.caption]
    df = _table(at).value
    assert len(df) == 5
    demo = predict.load_model("demo")
    answers = {f.name: result.assess(demo, predict.read_radiograph(str(f), f.name)) for f in chosen}
    assert df[wv.LOOK].iloc[0] == "can't tell (both)" and df[wv.LOOK].iloc[1] == "could not be read"
    for _, row in df.iterrows():
        r = answers.get(row[wv.FILE])
        if r is not None:
            assert row["p(PNEUMONIA)"] == numbers.percent(r.probs[1])
    # a click on the fourth row opens that film below, with the same answer
    name = df[wv.FILE].iloc[3]
    at.session_state[_table(at).key] = {"selection": {"rows": [3], "columns": [], "cells": []}}
    at.run()
    assert not at.exception, at.exception
    said = [m.value for m in at.markdown if m.value.startswith("Prediction:")]
    assert said and f"p(PNEUMONIA) = {numbers.percent(answers[name].probs[1])}" in said[0]
    labels = [b.label for b in at.get("download_button")]
    assert labels.count("Download report (PDF)") == 2  # the worklist's and the film's own
    assert {"Download the table (CSV)", "Download the table (JSON)"} <= set(labels)


def test_the_built_in_example_worklist_and_the_order(page):
    at = page
    at.toggle(key="worklist_example").set_value(True).run()
    assert not at.exception, at.exception
    df = _table(at).value
    assert len(df) == 20 and list(df[wv.LOOK].iloc[:3]) == ["can't tell (both)"] * 3
    at.selectbox(key="worklist_order").set_value("File name").run()
    names = list(_table(at).value[wv.FILE])
    assert names == sorted(names, key=str.lower)
