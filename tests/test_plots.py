"""Compare tables and figures on a real run store: one real tiny training plus running, failed, damaged and
4-class runs."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrdemo.config import TrainConfig
from cxrdemo.errors import RunError
from cxrdemo.model import backbones
from cxrdemo.runs import store as runs
from cxrdemo.views import compare, numbers, plots, words
from tests.helpers import FOUR


@pytest.fixture
def store(compare_store):
    infos = runs.list_runs(compare_store["root"])
    return compare_store, {i.run_id: i for i in infos}, compare.runs_table(infos)


def _row(table: pd.DataFrame, run_id: str) -> pd.Series:
    return table.set_index("run_id").loc[run_id]


# ---------------------------------------------------------------- the table

def test_table_lists_every_run_with_its_state(store):
    s, _, table = store
    assert len(table) == 6
    states = dict(zip(table["run_id"], table["status"]))
    assert states[s["done"]] == "completed" and states[s["running"]] == "running"
    assert states[s["failed"]] == "failed" and states[s["damaged"]] == "damaged"
    assert "damaged" in _row(table, s["damaged"])["problem"] and "config.json" in _row(table, s["damaged"])["problem"]
    assert "lower the learning rate" in _row(table, s["failed"])["problem"]
    assert _row(table, s["failed"])[list(compare.TEST_COLUMNS)].isna().all()


def test_table_values_equal_the_run_files(store):
    s, infos, table = store
    d = infos[s["done"]].path
    row, test, m = _row(table, s["done"]), runs.read_test_metrics(d), runs.read_metrics(d)
    for key in compare.TEST_KEYS:
        assert row[f"test_{key}"] == pytest.approx(test[key]), key
    assert row["epochs_run"] == 2 and row["epochs_planned"] == 2
    assert row["best_val_acc"] == pytest.approx(m["val_acc"].max())
    assert row["sec_per_epoch"] == pytest.approx(m["seconds"].mean())
    assert row["epochs_to_best"] == int(m.loc[m["val_loss"].idxmin(), "epoch"])
    total, trainable = backbones.param_counts("cnn8", 2, "none")
    assert row["total_params"] == total and row["trainable_params"] == trainable == int(m["trainable_params"].iloc[-1])
    assert row["classes"] == ", ".join(test["classes"]) and row["n_classes"] == 2
    assert row["dataset"] == runs.read_json(d / "config.json")["dataset"]["name"]  # the name, not the path
    assert (row["backbone"], row["init"], row["freeze"]) == ("cnn8", "scratch", "none")
    assert isinstance(row["started"], pd.Timestamp)


def test_gradual_run_reports_head_only_and_final_counts(store):
    s, infos, table = store
    row, m = _row(table, s["grad"]), runs.read_metrics(infos[s["grad"]].path)
    total, head_only = backbones.param_counts("cnn8", 2, "gradual:1", epoch=1)
    assert row["trainable_at_start"] == head_only == int(m["trainable_params"].iloc[0]) < total
    assert row["trainable_params"] == total == int(m["trainable_params"].iloc[-1])
    assert "head only" in row["params_note"] and f"{total:,}" in row["params_note"]


def test_running_run_has_nan_test_metrics_and_progress(store):
    s, infos, table = store
    row = _row(table, s["running"])
    assert row[list(compare.TEST_COLUMNS)].isna().all()
    assert row["epochs_run"] == 1 and row["best_val_acc"] == pytest.approx(0.625)
    assert compare.progress_text(infos[s["running"]]) == f"{s['running']}: epoch 1 of 5, batch 2/4 (training)"


def test_changed_states_names_runs_that_finished_or_started(store):
    s, infos, _ = store
    listed = list(infos.values())
    now = {r: i.state for r, i in infos.items()}
    assert compare.changed_states(now, listed) == []
    before = {**now, s["running"]: "queued", s["done"]: "running", "gone-run": "running"}
    assert sorted(compare.changed_states(before, listed)) == sorted([s["running"], s["done"]])


def test_filter_table(store):
    s, _, table = store
    assert set(compare.filter_table(table, backbone_names=["cnn5"])["run_id"]) == {s["four"]}
    assert set(compare.filter_table(table, statuses=["running", "failed"])["run_id"]) == {s["running"], s["failed"]}
    assert len(compare.filter_table(table, datasets=["/data/covid4"], statuses=["failed"])) == 0
    assert len(compare.filter_table(table)) == len(table)


def test_class_set_mixing_is_reported(store):
    s, _, table = store
    groups = compare.class_groups(table)
    assert set(groups) == {"NORMAL, PNEUMONIA", ", ".join(FOUR)}
    assert set(groups["NORMAL, PNEUMONIA"]) == {s["done"], s["grad"], s["running"], s["failed"]}
    msg = compare.mixing_message(groups).replace("\\", "")  # class names are escaped for Markdown
    assert "2 different class sets" in msg and "[NORMAL, PNEUMONIA]: 4 runs" in msg and "[COVID, " in msg
    assert compare.mixing_message(compare.class_groups(table[table["backbone"] == "cnn8"])) is None


def test_csv_export_round_trips(store):
    s, infos, table = store
    back = pd.read_csv(io.StringIO(compare.to_csv(table)))
    assert list(back.columns) == list(table.columns) and list(back["run_id"]) == list(table["run_id"])
    for col in ("test_accuracy", "test_auroc", "sec_per_epoch", "trainable_params", "best_val_acc"):
        np.testing.assert_allclose(back[col].to_numpy(float), table[col].astype(float).to_numpy(), equal_nan=True,
                                   atol=5e-5, rtol=0)  # rounded to 4 decimals (numbers.CSV_DIGITS)
    curves = compare.curves_frame(list(infos.values()))
    assert len(curves) == 2 + 2 + 1 + 2  # done, grad, running, four; failed and damaged have none
    back = pd.read_csv(io.StringIO(compare.to_csv(curves)))
    mine = back[back["run_id"] == s["done"]]
    np.testing.assert_allclose(mine["val_loss"], runs.read_metrics(infos[s["done"]].path)["val_loss"], atol=5e-5, rtol=0)


# ---------------------------------------------------------------- figures

@pytest.mark.parametrize("metric", ["loss", "accuracy"])
def test_curves_one_colour_per_run_train_solid_val_dashed(store, metric):
    s, infos, _ = store
    chosen = [infos[s[k]] for k in ("done", "running", "failed", "damaged", "four")]
    fig = plots.curves_figure(chosen, metric)
    names = [t.name for t in fig.data]
    with_curves = (s["done"], s["running"], s["four"])
    assert names == [f"{words.run_name(r)} · {split}" for r in with_curves for split in ("train", "val")]
    train_col, val_col, _ = plots.CURVE_METRICS[metric]
    for r in with_curves:
        tr, va = (t for t in fig.data if t.legendgroup == r)
        m = runs.read_metrics(infos[r].path)
        assert tr.line.dash == "solid" and va.line.dash == "dash" and tr.line.color == va.line.color
        np.testing.assert_allclose(tr.y, m[train_col])
        np.testing.assert_allclose(va.y, m[val_col])
        np.testing.assert_array_equal(tr.x, m["epoch"])
        assert f"%{{customdata:{numbers.d3(train_col)}}}" in tr.hovertemplate  # as views/numbers writes it
    assert len({t.line.color for t in fig.data}) == 3
    assert len(fig.data[2].y) == 1  # the running run shows its one finished epoch


def test_curves_mark_where_a_gradual_run_unfroze_with_its_trainable_parameters(store):
    s, infos, _ = store
    total, head_only = backbones.param_counts("cnn8", 2, "gradual:1", epoch=1)
    assert plots.unfreeze_epochs(runs.read_metrics(infos[s["grad"]].path)) == [(2, head_only, total)]
    fig = plots.curves_figure([infos[s["grad"]], infos[s["done"]]], "loss")
    (line,) = fig.layout.shapes  # the gradual run only: the other one trained its trunk from epoch 1
    assert line.x0 == line.x1 == 1.5 and line.line.dash == "dot"
    (note,) = fig.layout.annotations
    assert note.text == f"{words.run_name(s['grad'])}: trunk unfrozen ({head_only:,} → {total:,} trainable)"
    assert list(fig.data[0].text) == [f"{head_only:,}", f"{total:,}"]  # trainable parameters per epoch, on hover
    assert "trainable parameters" in fig.data[0].hovertemplate


def test_smoothing_plots_the_ema_and_hovers_the_raw_values(store):
    s, infos, _ = store
    assert plots.ema([1.0, 3.0, math.nan, 5.0], 0.5).tolist()[:2] == [1.0, 2.0]
    assert plots.ema([1.0, 3.0, math.nan, 5.0], 0.5)[3] == pytest.approx(3.5)
    fig = plots.curves_figure([infos[s["four"]]], "loss", smoothing=0.5)
    assert list(fig.data[0].y) == pytest.approx([1.3, 1.2]) and list(fig.data[0].customdata) == [1.3, 1.1]
    with pytest.raises(ValueError):
        plots.ema([1.0], 1.0)


def test_tradeoff_chart_is_log_x_and_leaves_out_runs_without_results(store):
    s, _, table = store
    two = table[table["classes"] == "NORMAL, PNEUMONIA"]
    for metric in ("test_accuracy", "test_recall"):
        fig = plots.tradeoff_figure(two, metric)
        assert fig.layout.xaxis.type == "log"
        (trace,) = fig.data
        assert list(trace.customdata[:, 0]) == [s["done"], s["grad"]]
        expect = two.set_index("run_id").loc[[s["done"], s["grad"]]]
        np.testing.assert_allclose(trace.x, expect["trainable_params"].astype(float))
        np.testing.assert_allclose(trace.y, expect[metric])
        np.testing.assert_allclose(trace.marker.color, expect["sec_per_epoch"])
    assert not plots.tradeoff_figure(table[table["run_id"] == s["running"]]).data


def test_bar_charts_show_params_and_time(store):
    s, _, table = store
    fig = plots.bar_figure(table, "trainable_params", "Trainable parameters", log=True)
    assert fig.layout.yaxis.type == "log"
    bars = dict(zip(fig.data[0].x, fig.data[0].y))
    name = dict(zip(table["run_id"], table["name"]))  # bars are labelled with the runs' short names
    assert name[s["failed"]] in bars and name[s["damaged"]] not in bars  # a failed run still has its recipe's count
    assert bars[name[s["done"]]] == _row(table, s["done"])["trainable_params"]
    secs = plots.bar_figure(table, "sec_per_epoch", "Seconds per epoch").data[0]
    assert set(secs.x) == {name[s[k]] for k in ("done", "grad", "running", "four")}


def test_confusion_matrix_is_the_saved_one(store):
    s, infos, _ = store
    for key in ("done", "four"):
        test = runs.read_test_metrics(infos[s[key]].path)
        (hm,) = plots.confusion_figure(test).data
        np.testing.assert_array_equal(hm.z, test["confusion"])
        assert list(hm.x) == list(hm.y) == test["classes"]
    with pytest.raises(RunError):
        plots.confusion_figure({"classes": ["a", "b"]})


def test_roc_binary_runs_from_origin_to_corner_with_the_operating_point(store):
    s, infos, _ = store
    test = runs.read_test_metrics(infos[s["done"]].path)
    fig = plots.roc_figure(test)
    curve, point = fig.data[1], fig.data[2]
    assert (curve.x[0], curve.y[0]) == (0, 0) and (curve.x[-1], curve.y[-1]) == (1, 1)
    assert f"AUROC {test['auroc']:.3f}" in curve.name
    assert point.x[0] == pytest.approx(1 - test["specificity"]) and point.y[0] == pytest.approx(test["sensitivity"])
    assert "PNEUMONIA" in fig.layout.title.text
    # 0-1 on both axes at any width (a 1:1 plot shrinks its domain, never widens its range); legend below
    assert tuple(fig.layout.xaxis.range) == tuple(fig.layout.yaxis.range) == (0, 1)
    assert fig.layout.xaxis.constrain == fig.layout.yaxis.constrain == "domain" and fig.layout.legend.y < 0


def test_tradeoff_labels_tell_runs_apart():
    import pandas as pd

    from cxrdemo.views import compare

    table = pd.DataFrame({"run_id": ["20261122-065856-cnn5-none", "20261122-071012-cnn5-none", "x-1-resnet18",
                                     "demo"],
                          "backbone": ["cnn5", "cnn5", "resnet18", "cnn5"], "init": ["scratch", "scratch",
                                                                                     "imagenet", "run:a"],
                          "freeze": ["none", "none", "head", "none"]})
    assert compare.point_labels(table) == ["cnn5 · From scratch · freeze none · 065856",
                                           "cnn5 · From scratch · freeze none · 071012",
                                           "resnet18 · ImageNet weights · freeze head", "shipped demo model"]


def test_roc_one_vs_rest_for_four_classes(store):
    s, infos, _ = store
    test = runs.read_test_metrics(infos[s["four"]].path)
    curves = [t for t in plots.roc_figure(test).data if t.name.endswith(")") and "vs rest (AUROC" in t.name]
    assert [c.name.split(" vs rest")[0] for c in curves] == FOUR
    for c in curves:
        assert (c.x[0], c.y[0]) == (0, 0) and (c.x[-1], c.y[-1]) == (1, 1)
    with pytest.raises(RunError, match="per-image scores"):
        plots.roc_figure({k: v for k, v in test.items() if k != "probs"})


def test_recipe_is_the_config(store):
    s, infos, _ = store
    recipe = compare.run_recipe(infos[s["done"]])
    assert recipe["config"]["backbone"] == "cnn8" and recipe["config"]["epochs"] == 2
    assert recipe["config"]["data"] == Path(infos[s["done"]].config["data"]).name  # shown by name, not path
    assert "root" not in recipe["dataset"]
    assert "damaged" in compare.run_recipe(infos[s["damaged"]])["problem"]


# ---------------------------------------------------------------- deleting

def test_delete_refuses_active_runs_and_removes_finished_ones(compare_store, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(compare_store["root"], root)
    with pytest.raises(RunError, match="is running.*Cancel it"):
        runs.delete_run(compare_store["running"], root)
    queued = runs.create_run(TrainConfig(), root, name="q")
    with pytest.raises(RunError, match="is queued"):
        runs.delete_run(queued.name, root)
    for bad in ("../runs", "nope", "", "a/b"):
        with pytest.raises(RunError):
            runs.delete_run(bad, root)
    (root / "escape").symlink_to(tmp_path)
    with pytest.raises(RunError, match="nothing was deleted"):
        runs.delete_run("escape", root)
    for key in ("done", "failed", "damaged"):
        runs.delete_run(compare_store[key], root)
        assert not (root / compare_store[key]).exists()
    left = {i.run_id for i in runs.list_runs(root)}
    assert left == {compare_store["grad"], compare_store["running"], compare_store["four"], queued.name, "escape"}
    assert (root / compare_store["running"] / "metrics.csv").is_file() and tmp_path.is_dir()
    assert json.loads((compare_store["root"] / compare_store["done"] / "config.json").read_text())  # original intact


def test_probability_figure_shows_the_model_probabilities():
    fig = plots.probability_figure(("NORMAL", "PNEUMONIA"), np.array([0.2, 0.8]), 1)
    bar = fig.data[0]
    assert list(bar.y) == ["NORMAL", "PNEUMONIA"] and list(bar.x) == [0.2, 0.8]
    assert list(bar.text) == ["20.0%", "80.0%"] and bar.marker.color[1] != bar.marker.color[0]
    assert not fig.layout.shapes  # no threshold given: nothing marked


def test_probability_figure_marks_the_threshold_on_the_second_class_bar():
    fig = plots.probability_figure(("NORMAL", "PNEUMONIA"), np.array([0.7, 0.3]), 1, threshold=0.208)
    (line,) = fig.layout.shapes
    assert line.x0 == line.x1 == 0.208 and (line.y0, line.y1) == (0.5, 1.5)  # across the PNEUMONIA bar only
    assert fig.layout.annotations[0].text == "threshold 20.8%" and fig.data[0].marker.color[1] == "#1f5fa8"


def test_reliability_figure_shows_before_and_after_with_their_ece():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    over = np.where(rng.random(200) < 0.8, y, 1 - y)  # 80% right but 99% sure: over-confident
    probs = np.stack([np.where(over == 0, 0.99, 0.01), np.where(over == 1, 0.99, 0.01)], 1)
    fair = np.stack([np.where(over == 0, 0.8, 0.2), np.where(over == 1, 0.8, 0.2)], 1)
    fig = plots.reliability_figure({"y_true": y.tolist(), "probs": probs.tolist(), "calibrated_probs": fair.tolist()})
    names = [t.name for t in fig.data]
    ece = [float(n.split("ECE ")[1].rstrip(")")) for n in names[1:]]
    accuracy = float((over == y).mean())
    assert names[1].startswith("before") and ece[0] == pytest.approx(0.99 - accuracy, abs=1e-3)
    assert names[2].startswith("after") and ece[1] == pytest.approx(abs(0.8 - accuracy), abs=1e-3) and ece[1] < ece[0]
    assert "No calibrated" in plots.reliability_figure({"y_true": [0], "probs": [[1, 0]]}).layout.annotations[0].text


def test_coverage_rows_and_the_sentence_when_the_promise_breaks():
    test = {"coverage": [
        {"level": 0.9, "ok": True, "coverage": 0.959, "conformal_coverage": 0.822, "mean_size": 1.137,
         "share_both": 0.137, "n": 241},
        {"level": 0.95, "ok": False, "reason": "Too few validation images for a 95% prediction set"}]}
    rows = compare.coverage_rows(test)
    assert rows[0]["promised"] == "90%" and rows[0]["reached"] == "82.2%" and rows[0]["mean set size"] == 1.137
    assert rows[1]["note"].startswith("Too few")
    (sentence,) = compare.broken_promises(test)
    assert "held it for 82.2%" in sentence
    test["coverage"][0]["conformal_coverage"] = 0.91
    assert compare.broken_promises(test) == []
