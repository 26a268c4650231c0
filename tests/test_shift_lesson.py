"""The reading lesson "The promise under shift" (issue 31): the 90% promise of the demo model's prediction sets,
read from its stored evaluation: kept (as far as the films can tell) in distribution, broken on shifted films."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cxrdemo import paths
from cxrdemo.runs import store as runs
from cxrdemo.views import shift_lesson

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "lessons.py")


def _evaluation(d: Path, sets: list[tuple[str, str, int, float, float]]) -> Path:
    """An evaluation.json with (data, label, n, conformal coverage at 90%, shown coverage at 90%) per set."""
    d.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(d / "evaluation.json", {"evaluations": [
        {"data": data, "label": label, "n": n, "coverage": [
            {"level": 0.9, "n": n, "coverage": shown, "conformal_coverage": conformal, "share_both": 0.1},
            {"level": 0.95, "n": n, "coverage": shown, "conformal_coverage": min(1.0, conformal + 0.05),
             "share_both": 0.02}]} for data, label, n, conformal, shown in sets]})
    return d


def test_promise_kept_in_distribution_and_broken_under_shift(tmp_path):
    d = _evaluation(tmp_path, [("dev", "in-distribution", 100, 0.90, 0.97), ("shift", "shifted", 200, 0.80, 0.95)])
    rows = shift_lesson.read_coverage(d)
    assert [(c.data, c.level, c.covered) for c in rows][::2] == [("dev", 0.9, 90), ("shift", 0.9, 160)]
    result = shift_lesson.shift_result(rows)
    e = result.effect
    assert e.value == pytest.approx(-0.10)
    lo, hi = rows[2].interval  # exact: 160 of 200
    assert (e.low, e.high) == pytest.approx((lo - 0.9, hi - 0.9)) and e.high < 0 and 0.73 < lo < 0.74
    assert "compatible with the promised 90.0%" in result.headline and "the promise is broken" in result.headline
    assert "held 95.0% on the shifted films" in result.headline
    assert len(result.table) == 4 and result.shown_table()["coverage (conformal sets)"].tolist()[2] == "80.0%"
    (fig,) = result.figures
    assert [t.name for t in fig.data] == ["promised 90.0%", "promised 95.0%"] and fig.layout.shapes[0].y0 == 0.9


def test_no_shifted_set_no_result(tmp_path):
    assert shift_lesson.shift_result(shift_lesson.read_coverage(tmp_path)) is None
    d = _evaluation(tmp_path / "one", [("dev", "in-distribution", 100, 0.9, 0.97)])
    assert shift_lesson.shift_result(shift_lesson.read_coverage(d)) is None


def test_the_shipped_demo_models_record_breaks_the_promise_on_cxr_shift():
    if not (paths.demo_run_dir() / "evaluation.json").is_file():
        pytest.skip("the shipped demo model's evaluation record is not in this checkout")
    result = shift_lesson.shift_result()
    assert result is not None and result.effect.high < 0  # the interval excludes keeping the promise
    assert "cxr-shift" in result.effect.what


def test_page_shows_the_lesson_from_the_record(tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    _evaluation(weights / "demo", [("dev", "in-distribution", 100, 0.90, 0.97), ("shift", "shifted", 200, 0.8, 0.95)])
    monkeypatch.setenv("CXRDEMO_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = "\n".join(m.value for m in at.markdown)
    assert "the promise is broken" in shown and "What to look for" in shown
    assert "**Result.** Promised on validation" in shown
