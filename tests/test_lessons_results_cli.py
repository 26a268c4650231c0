"""`python -m cxrdemo lessons results [--json]` (issue 31): each lesson's key, headline, effect and 95% interval, from
this machine's finished runs when there are any, else from the shipped examples."""

from __future__ import annotations

import json

import numpy as np

from cxrdemo.cli.main import main
from cxrdemo.runs import examples
from cxrdemo.runs import store as runs
from cxrdemo.views import lessons, numbers
from tests.test_lessons import fabricate


def results(capsys, *extra: str) -> list[dict]:
    assert main(["lessons", "results", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_results_of_own_runs_as_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(tmp_path / "runs"))  # main() sets it from --runs-dir: restored after
    fabricate(lessons.LESSONS["shortcut"], tmp_path / "runs", np.random.default_rng(0))
    out = {r["key"]: r for r in results(capsys, "--runs-dir", str(tmp_path / "runs"))}
    assert set(out) == {*lessons.LESSONS, "shift"}  # the reading lesson reads the demo model's stored evaluation
    mine = out["shortcut"]
    assert mine["source"] == "this machine" and "marker on every VIRUS image" in mine["headline"]
    # fabricated: every marked copy is called VIRUS; clean copies are called VIRUS where p(VIRUS) = 0.8
    test = runs.read_test_metrics(runs.list_runs(tmp_path / "runs")[-1].path)
    called_clean = float(np.mean(np.asarray(test["probs"])[:, 1] >= 0.5))
    assert abs(mine["effect"] - (1.0 - called_clean)) < 1e-4
    lo, hi = mine["ci95"]
    assert lo <= mine["effect"] <= hi and lo > 0  # every marked copy moved or stayed VIRUS
    assert all(out[k]["headline"] is None and out[k]["source"] is None for k in ("transfer", "freeze", "leakage"))


def test_results_fall_back_to_shipped_examples_and_print_words(tmp_path, capsys, monkeypatch):
    fabricate(lessons.LESSONS["leakage"], tmp_path / "work", np.random.default_rng(1))
    for info in runs.list_runs(tmp_path / "work"):
        examples.copy_as_example(info.path, tmp_path / "examples")
    monkeypatch.setenv("CXRDEMO_EXAMPLES_DIR", str(tmp_path / "examples"))
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(tmp_path / "empty"))
    out = {r["key"]: r for r in results(capsys, "--runs-dir", str(tmp_path / "empty"))}
    leak = out["leakage"]
    assert leak["source"] == "shipped examples" and "Split by image" in leak["headline"]
    # fabricated: split by image reports 90% on validation, the unseen patients get about 70%
    assert 0.1 < leak["effect"] < 0.35 and leak["ci95"][0] > 0
    assert main(["lessons", "results", "--runs-dir", str(tmp_path / "empty")]) == 0
    text = capsys.readouterr().out
    assert "leakage    [shipped examples] +" in text and "95% interval" in text
    assert "transfer   no finished runs here and no shipped examples" in text


def test_every_shipped_headline_interval_excludes_no_effect(tmp_path, capsys, monkeypatch):
    """Issue 31's bar, held for the examples the project ships (rebuilt examples must still clear it)."""
    monkeypatch.setenv("CXRDEMO_EXAMPLES_DIR", str(examples.EXAMPLES_RUNS_DIR))  # the real ones, this once
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(tmp_path / "empty"))
    out = {r["key"]: r for r in results(capsys, "--runs-dir", str(tmp_path / "empty"))}
    assert set(out) == {*lessons.LESSONS, "shift"}
    for key, r in out.items():
        assert r["source"] in ("shipped examples", "stored evaluation"), key
        lo, hi = r["ci95"]
        assert lo <= r["effect"] <= hi and (lo > 0 or hi < 0), (key, r["effect"], lo, hi)
    # the number printed beside a headline is the headline's own (it once read +16.7 beside +16.6)
    assert numbers.points(out["leakage"]["effect"]) in out["leakage"]["headline"]
    assert numbers.difference("auroc", out["transfer"]["effect"]) in out["transfer"]["headline"]
    assert main(["lessons", "results", "--runs-dir", str(tmp_path / "empty")]) == 0
    text = capsys.readouterr().out
    assert f"leakage    [shipped examples] {numbers.points(out['leakage']['effect'])}" in text
    # the leak and the transfer gain point up; the promise under shift is broken downwards
    assert out["leakage"]["ci95"][0] > 0 and out["transfer"]["ci95"][0] > 0 and out["shift"]["ci95"][1] < 0
