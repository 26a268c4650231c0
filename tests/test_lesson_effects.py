"""Lesson headlines with intervals that can exclude zero (issue 31): the paired AUROC gap, the freeze lesson's costs
and gains per level, transfer read in AUROC, and the estimate before the click (this computer's speed first)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdemo.model import metrics, paired
from cxrdemo.runs import durations
from cxrdemo.runs import store as runs
from cxrdemo.views import lesson_results, lessons
from tests.test_lessons import fabricate


def test_auroc_gap_is_the_difference_of_the_two_aurocs_with_a_paired_interval():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 50)
    strong, weak = rng.random(100) + 0.8 * y, rng.random(100) + 0.1 * y
    gap, lo, hi = paired.auroc_gap(y, strong, weak)
    assert gap == pytest.approx(metrics.binary_auroc(y == 1, strong) - metrics.binary_auroc(y == 1, weak))
    assert 0 < lo < gap < hi
    same = paired.auroc_gap(y, strong, strong)
    assert same == (0.0, 0.0, 0.0)  # paired: the same scores never differ in any resample
    noise = paired.auroc_gap(y, rng.random(100), rng.random(100))
    assert noise[1] < 0 < noise[2]


def test_freeze_result_states_each_levels_cost_and_the_head_only_auroc_gap(tmp_path):
    lesson = lessons.LESSONS["freeze"]
    fabricate(lesson, tmp_path, np.random.default_rng(3))
    infos = runs.list_runs(tmp_path)
    result = lesson_results.lesson_result(lesson, infos)
    table = result.table.set_index("recipe")
    assert np.isnan(table.loc["demo cnn5, freeze none", "AUROC gap vs every layer"])
    found = lessons.lesson_runs(lesson, infos)
    head, full = (runs.read_test_metrics(found[k].path) for k in ("cnn5-head", "cnn5-none"))
    expect = paired.auroc_gap(np.asarray(head["y_true"]), np.asarray(head["probs"])[:, 1],
                              np.asarray(full["probs"])[:, 1])
    assert (result.effect.value, result.effect.low, result.effect.high) == pytest.approx(expect)
    assert table.loc["demo cnn5, freeze head", "AUROC gap vs every layer"] == pytest.approx(expect[0])
    assert "Training only the head trains 2,000 parameters" in result.headline  # fabricate: 1000 x epoch 2
    assert "Freezing groups 1-4 still trains" in result.headline and "test AUROC" in result.headline
    assert result.effect.what == "test AUROC, head only minus every layer"


def test_transfer_headline_reads_auroc_at_each_share(tmp_path):
    lesson = lessons.LESSONS["transfer"]
    fabricate(lesson, tmp_path, np.random.default_rng(4))
    result = lesson_results.lesson_result(lesson, runs.list_runs(tmp_path))
    assert result.headline.count("AUROC") == 3 and "accuracy" in result.headline
    assert result.effect.what.startswith("test AUROC, demo model minus scratch, 10%")


def test_estimate_uses_this_computers_speed_before_the_examples_timed_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDEMO_CACHE_DIR", str(tmp_path / "cache"))
    lesson = lessons.LESSONS["shortcut"]
    fabricate(lesson, tmp_path / "work", np.random.default_rng(0))
    shipped = runs.list_runs(tmp_path / "work")
    for info in shipped:  # each example run took 100 s from start to finish
        runs.atomic_write_json(info.path / "status.json", {**info.status, "started": 0.0, "finished": 100.0})
    shipped = runs.list_runs(tmp_path / "work")
    monkeypatch.setattr(lessons, "measured_seconds", lambda r, s: 100.0)
    est = lessons.estimate(lesson, shipped, tmp_path / "runs")
    start = durations.REFERENCE_START
    assert est.measured == 3 and est.seconds == pytest.approx(3 * (100.0 + start.process_s))
    slow = {b: {f: 10 * v for f, v in row.items()} for b, row in durations.REFERENCE.items()}
    durations.save_measured({"per_image_s": slow, "img_size": 224, "cpu": "this CPU", "date": "today"})
    est = lessons.estimate(lesson, shipped, tmp_path / "runs")
    assert est.measured == 0 and est.speed.source == "measured"
    epochs = sum(durations.training_seconds(r.config, 240, 60, est.speed) for r in lessons.recipes(lesson))
    assert est.seconds == pytest.approx(epochs + 3 * start.seconds, rel=0.05)  # every run started here
    words = lessons.estimate_words(lesson, est)
    assert f"plus about {round(start.seconds)} s to start and finish each run" in words
