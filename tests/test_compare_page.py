"""The Compare page rendered by Streamlit's AppTest on the fixture run store."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cxrdemo.runs import store as runs
from cxrdemo.views import words

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "compare.py")


def _page(monkeypatch, root) -> AppTest:
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(root))
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]  # friendly_errors would hide a bug as a sentence
    return at


def _charts(at: AppTest) -> list:
    return at.get("plotly_chart")


def test_page_shows_table_curves_and_mixing_warning(compare_store, monkeypatch):
    at = _page(monkeypatch, compare_store["root"])
    table = at.dataframe[0]
    df = table.value
    assert len(df) == 6 and {"run_id", "status", "test_accuracy", "trainable_params"} <= set(df.columns)
    assert set(df.loc[df["status"] == "damaged", "run_id"]) == {compare_store["damaged"]}
    warnings = re.sub(r"\\(.)", r"\1", " ".join(w.value for w in at.warning))  # as read: escapes removed
    assert compare_store["damaged"] in warnings and "damaged" in warnings
    chosen = at.multiselect(key="chosen").value
    assert compare_store["damaged"] not in chosen and compare_store["running"] in chosen
    # issue 31: the default choice is the largest class set (the 2-class runs), not a mix with the 4-class run
    assert "different class sets" not in warnings and compare_store["four"] not in chosen
    assert len(_charts(at)) >= 6  # loss, accuracy, trade-off, 2 bars, confusion, ROC
    assert any(compare_store["running"] in c.value for c in at.caption)  # live progress line
    labels = [b.proto.label for b in at.get("download_button")]
    assert [lb for lb in labels if lb.startswith(("Download the table", "Download the curves"))] == [
        "Download the table (CSV)", "Download the curves (CSV)"]
    completed = [r for r in chosen if r in (compare_store["done"], compare_store["grad"], compare_store["four"])]
    assert completed and labels.count("Download the model card (Markdown)") == len(completed)  # one card per run
    at.multiselect(key="chosen").set_value([*chosen, compare_store["four"]]).run()
    assert "2 different class sets" in " ".join(w.value for w in at.warning)  # a mix the user chose is warned of


@pytest.mark.slow
def test_page_choices_drive_the_charts(compare_store, monkeypatch):
    at = _page(monkeypatch, compare_store["root"])
    at.multiselect(key="chosen").set_value([compare_store["done"], compare_store["failed"]]).run()
    assert not at.exception
    assert "different class sets" not in " ".join(w.value for w in at.warning)
    at.selectbox(key="tradeoff_metric").set_value("test_recall").run()
    at.selectbox(key="detail_run").set_value(compare_store["failed"]).run()
    assert not at.exception and not at.error
    assert any("no test results" in i.value for i in at.info)
    at.multiselect(key="chosen").set_value([]).run()
    assert not at.exception and any("Choose one or more runs" in i.value for i in at.info)


def _figure(at: AppTest, title_part: str) -> dict:
    specs = [json.loads(c.proto.spec) for c in _charts(at)]
    return next(f for f in specs if title_part in f["layout"].get("title", {}).get("text", ""))


def test_page_filters_and_class_set_choice(compare_store, monkeypatch):
    at = _page(monkeypatch, compare_store["root"])
    chosen = at.multiselect(key="chosen").value  # the largest class set by default (issue 31); add the other one
    at.multiselect(key="chosen").set_value([*chosen, compare_store["four"]]).run()
    points = _figure(at, "Cost vs benefit")["data"][0]["customdata"]
    assert {p[0] for p in points} == {compare_store["done"], compare_store["grad"]}  # first class set by default
    at.selectbox(key="class_set").set_value("COVID, Lung_Opacity, Normal, Viral").run()
    assert not at.exception and not at.error
    assert [p[0] for p in _figure(at, "Cost vs benefit")["data"][0]["customdata"]] == [compare_store["four"]]
    at.multiselect(key="filter_backbone").set_value(["cnn8"]).run()
    assert not at.exception and not at.error
    assert list(at.dataframe[0].value["backbone"]) == ["cnn8"] * 4  # the damaged run has no backbone
    assert compare_store["four"] not in at.multiselect(key="chosen").value
    assert "different class sets" not in " ".join(w.value for w in at.warning)
    names = [t["name"] for t in _figure(at, "Loss per epoch")["data"]]
    assert f"{words.run_name(compare_store['running'])} · val" in names
    assert not any(words.run_name(compare_store["four"]) in n for n in names)


@pytest.mark.slow
def test_page_delete_needs_confirmation_and_refuses_running(compare_store, monkeypatch, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(compare_store["root"], root)
    at = _page(monkeypatch, root)
    at.selectbox(key="delete_run").set_value(compare_store["running"]).run()
    assert at.button(key="delete_button").disabled
    at.checkbox(key="delete_confirm").check().run()
    at.button(key="delete_button").click().run()
    assert not at.exception
    assert any("is running" in e.value for e in at.error)
    assert (root / compare_store["running"]).is_dir()

    at.selectbox(key="delete_run").set_value(compare_store["failed"]).run()
    at.checkbox(key="delete_confirm").check().run()
    at.button(key="delete_button").click().run()
    assert not at.exception
    assert not (root / compare_store["failed"]).exists()
    assert compare_store["failed"] not in set(at.dataframe[0].value["run_id"])
    assert any(f"Run {compare_store['failed']} was deleted" in s.value for s in at.success)


def test_page_with_an_empty_store(monkeypatch, tmp_path):
    at = _page(monkeypatch, tmp_path / "none")
    assert any("No runs yet" in i.value for i in at.info)
    assert not runs.list_runs(tmp_path / "none")


def test_empty_store_links_to_the_trainer_and_the_demo_model_can_be_a_reference(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(tmp_path / "none"))
    at = AppTest.from_file(str(Path(PAGE).parents[1] / "app.py"), default_timeout=60)
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert [p.proto.page for p in at.get("page_link")] == ["trainer"]
    at.toggle(key="with_demo").set_value(True).run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    row = at.dataframe[0].value.set_index("run_id").loc["demo"]
    assert 0.5 < row["test_accuracy"] <= 1 and row["status"] == "completed"
    assert "delete_run" not in [s.key for s in at.selectbox]  # the reference is never offered for deletion
