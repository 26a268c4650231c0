"""views/numbers: one way to write every number; model/metrics: one interval computation (issue 27).

Built from the shipped example runs (cxrdemo/examples/runs), read directly, so the checks see what a fresh install
shows: no 'None' or long float in the Compare CSV or a lesson table, the same interval on the model card and in
the lesson for the same run, and a 0%/100% share worded as a count with its exact (Clopper-Pearson) interval.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxrdemo import paths
from cxrdemo.model import metrics
from cxrdemo.runs import examples
from cxrdemo.runs import store as runs
from cxrdemo.views import compare, lesson_results, lessons, model_card, numbers, plots

EXAMPLES = paths.PACKAGE_DIR / "examples" / "runs"
LONG_FLOAT = re.compile(r"\d\.\d{5,}")


@pytest.fixture(scope="module")
def shipped() -> list[runs.RunInfo]:
    return examples.list_examples(EXAMPLES)


# ---------------------------------------------------------------- the formatters

def test_one_precision_per_kind():
    assert numbers.percent(0.75) == "75.0%" and numbers.percent(0.7102) == "71.0%" and numbers.percent(0.72) == "72.0%"
    assert numbers.percent(1.0) == "100%" and numbers.percent(0.0) == "0%" and numbers.percent(0.6999999999999999) \
        == "70.0%"
    assert numbers.score(0.98685) == "0.987" and numbers.metric("auroc", 0.5) == "0.500"
    assert numbers.metric("test_accuracy", 0.5) == "50.0%" and numbers.metric("val_loss", 0.123456) == "0.1235"
    assert numbers.level(0.9) == "90%" and numbers.level(0.975) == "97.5%"
    assert numbers.points(0.031) == "+3.1 points" and numbers.points(-0.004) == "\u22120.4 points"
    assert numbers.difference("auroc", -0.0123) == "\u22120.012"
    assert numbers.difference_interval("accuracy", -0.02, 0.061) == "95% interval \u22122.0 to +6.1 points"


@pytest.mark.parametrize("value", [None, float("nan"), pd.NA, np.nan, "x"])
def test_a_missing_value_is_a_dash_never_none(value):
    assert numbers.percent(value) == numbers.score(value) == numbers.metric("auroc", value) == "—"
    assert numbers.with_interval("accuracy", value, (0.1, 0.2)) == "—"
    if not isinstance(value, str):
        for kind in ("percent", "score", "count", "points", "seconds", "plain"):
            assert numbers.cell(value, kind) == "—"


def test_intervals_and_values_with_them():
    assert numbers.interval("accuracy", 0.66, 0.83) == "66.0–83.0%"
    assert numbers.interval("auroc", 0.9289, 0.98412) == "0.929–0.984"
    assert numbers.with_interval("accuracy", 0.75, (0.66, 0.84)) == "75.0% (66.0–84.0%)"
    assert numbers.with_interval("ece", 0.0929, [0.0527, 0.1632]) == "0.093 (0.053–0.163)"
    assert numbers.with_interval("accuracy", 0.75, None) == "75.0%"
    assert numbers.with_interval("accuracy", 0.75, (float("nan"), float("nan"))) == "75.0%"


def test_rounded_tables_have_no_long_floats():
    df = pd.DataFrame({"a": [0.1 + 0.2, 0.6999999999999999], "b": ["x", None], "c": [1, 2]})
    text = df.pipe(numbers.rounded).to_csv(index=False)
    assert "0.3," in text and "0.7," in text and not LONG_FLOAT.search(text)
    shown = numbers.shown_table(df, {"a": "percent"})
    assert shown["a"].tolist() == ["30.0%", "70.0%"] and shown["b"].tolist() == ["x", "—"]


# ---------------------------------------------------------------- a 0% or 100% share: a count and an exact interval

def test_a_share_of_one_is_a_count_with_the_clopper_pearson_interval():
    y = np.array([0] * 120 + [1] * 80)
    probs = np.zeros((200, 2))
    probs[:120, 0] = 1.0  # every normal film called normal
    probs[120:, 1] = np.r_[np.ones(70), np.zeros(10)]  # 70 of 80 pneumonia films found
    probs[130:, 0] = 1 - probs[130:, 1]
    probs[120:130, 0] = 0.0
    found = metrics.metric_intervals(y, probs, ("NORMAL", "PNEUMONIA"))
    spec, sens = found["specificity"], found["sensitivity"]
    ref = stats.binomtest(120, 120).proportion_ci(confidence_level=0.95, method="exact")
    assert spec.exact and (spec.k, spec.n) == (120, 120) and spec.value == 1.0
    assert spec.low == pytest.approx(ref.low) and spec.high == pytest.approx(ref.high) == 1.0
    assert spec.low == pytest.approx(0.025 ** (1 / 120))  # Clopper-Pearson at k = n: (alpha / 2) ** (1 / n)
    assert not sens.exact and sens.low < 70 / 80 < sens.high  # a share strictly between 0 and 1: the bootstrap
    text = numbers.estimate(spec, ("NORMAL", "PNEUMONIA"))
    assert text == "all 120 NORMAL films called NORMAL; 95% interval 97.0–100%" and f"{100 * ref.low:.1f}" == "97.0"
    assert "(100–100" not in text and "1.000" not in text


def test_a_share_of_zero_and_a_collapsed_interval_are_exact_too():
    none = metrics.estimates({"sensitivity": 0.0}, {"sensitivity": [0.0, 0.0]}, [[5, 5], [40, 0]])["sensitivity"]
    ref = stats.binomtest(0, 40).proportion_ci(method="exact")
    assert none.exact and none.low == 0.0 and none.high == pytest.approx(ref.high)
    assert numbers.estimate(none, ("NORMAL", "PNEUMONIA")).startswith("none of the 40 PNEUMONIA films called")
    kept = metrics.estimates({"accuracy": 0.5}, {"accuracy": [0.5, 0.5]}, [[1, 1], [1, 1]])["accuracy"]
    assert kept.exact and kept.low < 0.5 < kept.high  # the bootstrap collapsed: the count speaks instead


# ---------------------------------------------------------------- the surfaces, from the shipped example runs

def test_model_card_and_lesson_show_the_same_interval_for_the_same_run(shipped):
    lesson = lessons.LESSONS["freeze"]
    result = lesson_results.lesson_result(lesson, shipped)
    best = result.table.sort_values("test micro-recall", ascending=False).iloc[0]
    info = next(i for i in shipped if i.run_id == best["run"])
    est = lesson_results.accuracy_estimate(runs.read_test_metrics(info.path))
    shown = numbers.with_interval("accuracy", est.value, (est.low, est.high))
    card = model_card.model_card(info.path)
    row = next(line for line in card.splitlines() if line.startswith("| its test split"))
    assert row.split(" | ")[3] == shown  # the card's accuracy cell: the lesson's own computation and words
    assert est == lesson_results.accuracy_estimate(runs.read_test_metrics(info.path))  # one computation, repeatable


def test_lesson_tables_read_one_precision_and_never_none(shipped):
    for lesson in lessons.LESSONS.values():
        shown = lesson_results.lesson_result(lesson, shipped).shown_table()
        text = shown.to_csv(index=False)
        assert "None" not in text and "nan" not in text.lower() and not LONG_FLOAT.search(text), lesson.key
        for col in shown.columns:
            if lesson_results.column_kind(col) == "percent":
                assert all(re.fullmatch(r"—|\d{1,2}\.\d%|0%|100%", v) for v in shown[col]), (lesson.key, col)
            if lesson_results.column_kind(col) == "score":
                assert all(re.fullmatch(r"—|[-+−]?[01]\.\d{3}", v) for v in shown[col]), (lesson.key, col)


def test_compare_csv_and_table_have_no_none_or_long_floats(shipped):
    table = compare.runs_table(shipped)
    csv = compare.to_csv(table)
    assert not LONG_FLOAT.search(csv) and "None" not in csv
    back = pd.read_csv(io.StringIO(csv))
    np.testing.assert_allclose(back["test_accuracy"], table["test_accuracy"].astype(float), atol=5e-5)
    html = compare.styled_table(table.assign(test_auroc=np.nan)).to_html()
    assert "None" not in html and ">—<" in html and not LONG_FLOAT.search(html)
    assert "75.0%" in html  # the freeze lesson's best run, as its lesson and model card say it
    curves = compare.to_csv(compare.curves_frame(shipped))
    assert not LONG_FLOAT.search(curves)
    rows = compare.coverage_rows({"coverage": [{"level": 0.9, "ok": False, "reason": "too few"},
                                               {"level": 0.95, "ok": True, "conformal_coverage": 0.95,
                                                "coverage": 0.96, "mean_size": 1.1, "share_both": 0.1, "n": 40}]})
    assert rows[0].keys() == rows[1].keys() and None not in rows[0].values() and rows[0]["promised"] == "90%"


# ---------------------------------------------------------------- the bar's threshold label

@pytest.mark.parametrize("predicted", [0, 1])
def test_the_threshold_label_is_legible_on_any_bar(predicted):
    fig = plots.probability_figure(("NORMAL", "PNEUMONIA"), np.array([0.3, 0.7]), predicted, threshold=0.208)
    (note,) = fig.layout.annotations
    assert note.text == "threshold 20.8%" and note.x == 0.208
    assert note.yref == "paper" and note.y >= 1 and note.yanchor == "bottom"  # above the plot area: on no bar
    assert note.bgcolor == "white" and note.bordercolor == plots.THRESHOLD_COLOUR and note.borderwidth >= 1
    assert fig.layout.margin.t >= 40  # room above the bars for the label
    assert fig.data[0].text == ("30.0%", "70.0%")
