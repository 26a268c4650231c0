"""Charts a class can read (issue 31): legends below the axis title in a margin that holds them, trade-off labels that
alternate and are not clipped, sane axes for one run, timelapse row titles clear of the toolbar, Compare's default
selection on one class set, sweep runs named by what differs, and 'cannot be paired' as information."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrdemo.config import TrainConfig
from cxrdemo.model import paired, probes
from cxrdemo.model.predictions import Predictions
from cxrdemo.runs import store as runs
from cxrdemo.views import compare, lesson_results, lessons, plots, timelapse, words
from tests.test_lessons import fabricate


def _curve_run(root: Path, name: str) -> runs.RunInfo:
    d = runs.create_run(TrainConfig(epochs=3), root, name=name)
    for e in (1, 2, 3):
        runs.append_metrics(d, {"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "train_acc": 0.5 + e / 10,
                                "val_acc": 0.45 + e / 10, "seconds": 1.0, "trainable_params": 100})
    return runs.load_run(d)


def test_curve_legend_sits_below_the_axis_title_in_a_margin_that_holds_every_row(tmp_path):
    infos = [_curve_run(tmp_path, f"a-rather-long-sweep-label-{i}") for i in range(6)]
    bottoms = []
    for chosen in (infos[:1], infos):
        fig = plots.curves_figure(chosen, "loss")
        legend, margin = fig.layout.legend, fig.layout.margin
        assert legend.orientation == "h" and legend.yref == "container" and legend.y == 0
        assert legend.yanchor == "bottom"
        rows = plots.legend_rows([t.name for t in fig.data])
        # the margin holds the axis title and every legend row: nothing scrolls, nothing overlaps the axis
        assert margin.b >= plots.AXIS_TITLE_PX + rows * plots.LEGEND_ROW_PX
        assert fig.layout.height - margin.b - margin.t >= 320  # the plot area keeps its size
        bottoms.append((rows, margin.b))
    assert bottoms[1][0] >= 3 * bottoms[0][0] and bottoms[1][1] > bottoms[0][1]  # 12 entries of ~45 characters


def _table(params: list[float], acc: list[float], secs: list[float]) -> pd.DataFrame:
    n = len(params)
    return pd.DataFrame({"run_id": [f"20261206-0556{i:02d}-cnn5-{f}-sweep" for i, f in enumerate(
        ["none", "1", "2", "3", "4", "head"][:n])], "backbone": ["cnn5"] * n, "init": ["run:demo"] * n,
        "freeze": ["none", "1", "2", "3", "4", "head"][:n], "trainable_params": params, "test_accuracy": acc,
        "sec_per_epoch": secs})


def test_tradeoff_of_one_run_has_a_share_axis_and_no_colour_bar():
    fig = plots.tradeoff_figure(_table([1.6e6], [0.8], [15.8]))
    assert tuple(fig.layout.yaxis.range) == (0, 1.08) and fig.layout.yaxis.tickformat == ".0%"
    (trace,) = fig.data
    assert not trace.marker.showscale and trace.marker.color == "#1f5fa8"
    assert "15.8 s per epoch" in trace.text[0]  # the seconds move into the label
    lo, hi = fig.layout.xaxis.range
    assert lo < np.log10(1.6e6) < hi and hi - lo >= 1.0 and trace.cliponaxis is False


def test_tradeoff_labels_of_neighbours_alternate_and_are_not_clipped():
    fig = plots.tradeoff_figure(_table([1.6e6, 1.5e6, 1.4e6, 1.2e6, 6e5, 1026], [0.7] * 6, [6, 5, 4, 3, 2, 0.4]))
    (trace,) = fig.data
    assert trace.marker.showscale  # the seconds differ: the colour bar tells them apart
    order = np.argsort(trace.x)
    positions = [trace.textposition[i] for i in order]
    assert all(a != b for a, b in zip(positions, positions[1:]))  # neighbours along x: one above, one below
    lo, hi = fig.layout.xaxis.range
    assert lo < np.log10(1026) - 0.4 and hi > np.log10(1.6e6) + 0.4 and trace.cliponaxis is False


def test_freeze_lessons_chart_labels_are_short_alternating_and_unclipped(tmp_path):
    lesson = lessons.LESSONS["freeze"]
    fabricate(lesson, tmp_path, np.random.default_rng(0))
    (fig,) = lesson_results.lesson_result(lesson, runs.list_runs(tmp_path)).figures
    (trace,) = fig.data
    assert all(len(t) <= 18 and not t.startswith("demo") for t in trace.text) and trace.cliponaxis is False
    assert fig.layout.yaxis.range[0] <= min(trace.y) and fig.layout.margin.r >= 40


def _timeline(n_probes: int = 3, epochs: int = 2) -> probes.Timeline:
    rng = np.random.default_rng(0)
    p = rng.random((epochs, n_probes, 2))
    return probes.Timeline([f"p{i}.png" for i in range(n_probes)], ("NORMAL", "PNEUMONIA"),
                           np.array([i % 2 for i in range(n_probes)]), np.zeros((n_probes, 8, 8), np.uint8),
                           list(range(1, epochs + 1)), p / p.sum(2, keepdims=True),
                           np.zeros((epochs, n_probes, 4, 4), np.uint8))


def test_timelapse_row_titles_stay_clear_of_the_toolbar_and_fit_their_row():
    long = "walk3cancel · resnet18 · freeze head · 6 Dec 05:56"
    fig = timelapse.timelapse_figure({"A": _timeline(), "B": _timeline()}, names={"A": long, "B": "short"})
    assert fig.layout.margin.t >= 60  # the toolbar's strip is above the first row's notes
    titles = [a for a in fig.layout.annotations if a.textangle == 90]
    assert [t.text for t in titles] == [timelapse.short_title(long), "short"]
    assert len(titles[0].text) <= timelapse.TITLE_CHARS and titles[0].text.endswith("…")
    right = max(fig.layout[k].domain[1] for k in fig.layout if k.startswith("xaxis"))
    assert all(t.x >= right and t.xanchor == "left" and t.font.size <= 11 for t in titles)  # right of the images
    assert fig.layout.margin.r >= 30


def test_compare_opens_on_the_largest_class_set(tmp_path):
    def info(run_id: str, classes: list[str]) -> runs.RunInfo:
        return runs.RunInfo(run_id, tmp_path / run_id, meta={"dataset": {"classes": classes}})

    two, four = ["NORMAL", "PNEUMONIA"], ["COVID", "Lung_Opacity", "Normal", "Viral"]
    infos = [info("a", two), info("b", four), info("c", two), info("d", four), info("e", two)]
    assert compare.default_choice([i.run_id for i in infos], infos) == ["a", "c", "e"]
    tie = infos[:4]  # two of each: the set of the newest run
    assert compare.default_choice([i.run_id for i in tie], tie) == ["b", "d"]


def test_runs_of_one_sweep_are_named_by_what_differs():
    ids = ["20261206-055658-cnn5-none-walk3cancel", "20261206-055659-resnet18-head-walk3cancel",
           "20261206-055659-cnn5-3-walk3cancel", "20261206-055700-cnn5-none-other"]
    assert words.run_names(ids) == ["walk3cancel · cnn5 · freeze none · 6 Dec 05:56",
                                    "walk3cancel · resnet18 · freeze head · 6 Dec 05:56",
                                    "walk3cancel · cnn5 · freeze 3 · 6 Dec 05:56", "other · 6 Dec 05:57"]
    same = ["20261206-055658-cnn5-none-rep", "20261206-055659-cnn5-none-rep"]  # only the time differs
    assert words.run_names(same) == ["rep · cnn5 · freeze none · 6 Dec 05:56:58",
                                     "rep · cnn5 · freeze none · 6 Dec 05:56:59"]


def test_runs_of_other_classes_are_not_pairable_as_information():
    a = Predictions(["a.png"], ["h1"], ("NORMAL", "PNEUMONIA"), np.array([0]), np.array([[0.9, 0.1]]), np.array([0]))
    b = Predictions(["a.png"], ["h1"], ("BACTERIA", "VIRUS"), np.array([0]), np.array([[0.9, 0.1]]), np.array([0]))
    with pytest.raises(paired.NotPairable, match="cannot be paired"):
        paired.match(a, b)
