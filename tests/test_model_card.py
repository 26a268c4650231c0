"""Model cards: every completed run, example runs without weights and the demo model get one from the same code."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cxrdemo import paths
from cxrdemo.cli.main import main as cli
from cxrdemo.model import checkpoint, metrics
from cxrdemo.runs import examples
from cxrdemo.runs import store as runs
from cxrdemo.runs.worker import execute_run
from cxrdemo.views import numbers
from cxrdemo.views.model_card import model_card
from tests.helpers import make_split_dataset, tiny_config

PAGES = Path(__file__).resolve().parents[1] / "app_pages"
SHIPPED_DEMO = paths.PACKAGE_DIR.parent / "weights" / "demo"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A completed cnn8 run (one epoch, 32 px) on a small learnable dataset, trained once for the module."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("card")
    mp.setenv("CXRDEMO_RUNS_DIR", str(root / "runs"))
    mp.setenv("CXRDEMO_CACHE_DIR", str(root / "cache"))
    mp.setenv("CXRDEMO_THREADS", "1")
    try:
        data = make_split_dataset(root / "data", (8, 10, 10))
        d = runs.create_run(tiny_config(data, threshold="val"), root / "runs", name="card")
        assert execute_run(d, runs_dir=root / "runs")["state"] == "completed"
    finally:
        mp.undo()
    return d


def test_a_run_card_states_its_own_numbers(tiny_run):
    text = model_card(tiny_run)
    tm = runs.read_test_metrics(tiny_run)
    ci = metrics.metric_intervals(np.array(tm["y_true"]), np.array(tm["probs"]), tm["classes"], tm["threshold"])
    acc = ci["accuracy"]
    assert acc.method == "bootstrap" and acc.value == tm["accuracy"]  # 0 < accuracy < 1 on this tiny run
    assert f"{100 * tm['accuracy']:.1f}% ({100 * acc.low:.1f}–{100 * acc.high:.1f}%)" in text
    assert f"{tm['auroc']:.3f} ({ci['auroc'].low:.3f}–{ci['auroc'].high:.3f})" in text
    cal = tm["calibration"]
    assert f"{cal['ece_before']:.3f} ({cal['ece_before_ci'][0]:.3f}–{cal['ece_before_ci'][1]:.3f})" in text
    assert f"{cal['ece_after']:.3f}" in text
    rec = checkpoint.load(tiny_run / "model.pt").records
    assert f"T = {rec['calibration']['temperature']:.3f}" in text
    assert f"**{rec['domain']['cutoff']:.2f}**" in text and "validation images stay under" in text
    assert "| its test split | in-distribution | 20 (10 : 10) |" in text
    assert "this run's own test split only" in text and "shifted |" not in text
    assert "not for clinical use" in text and "tuned on validation images for balanced accuracy" in text
    assert "| train | 8 | 8 | 16 |" in text  # the scan summary: images per split and class
    assert "`cnn8`" in text and "1 epoch at 32 px" in text and "python -m cxrdemo train --data" in text
    ok = [c for c in tm["coverage"] if c["ok"]]
    assert [c["level"] for c in ok] == [0.9]  # 10 validation images per class: enough for 90%, not for 95%
    shown = [numbers.percent(ok[0][k]) for k in ("conformal_coverage", "coverage")]  # the one formatter
    assert f"| its test split | 90% | {shown[0]} | {shown[1]} |" in text
    assert "95% not offered (see below)" in text and "each class needs at least 19. No set is shown. |" in text


def test_an_example_run_without_weights_still_gets_a_card(tiny_run, tmp_path):
    ex = examples.copy_as_example(tiny_run, tmp_path / "examples")
    assert not (ex / "model.pt").exists()
    text = model_card(ex)
    tm = runs.read_test_metrics(tiny_run)
    assert f"{100 * tm['accuracy']:.1f}% (" in text  # still measured, with its interval, from the saved files
    assert "ships without its model file (model.pt)" in text
    assert "The in-domain cut-off is recorded in model.pt, which this run does not ship." in text
    assert f"{tm['calibration']['ece_before']:.3f}" in text  # ECE came with test_metrics.json


def test_the_demo_card_leads_with_the_shifted_set_and_is_the_shipped_file():
    text = model_card(SHIPPED_DEMO)
    results = text[text.index("## Results"):text.index("## Calibration")]
    assert results.index("| cxr-shift/test | shifted") < results.index("| cxr-dev/test | in-distribution")
    rec = checkpoint.load(SHIPPED_DEMO / "model.pt").records
    assert f"T = {rec['calibration']['temperature']:.3f}" in text and f"**{rec['domain']['cutoff']:.2f}**" in text
    assert "99.5% of the 488 validation images" in text and "chosen after seeing" in text
    assert "ECE before" in text and "| cxr-shift/test | 90% |" in text
    # one generator: the shipped MODEL_CARD.md is exactly what the code makes from the folder
    assert (SHIPPED_DEMO / "MODEL_CARD.md").read_text() == text


def test_cli_prints_the_card_and_refuses_a_bad_folder(tiny_run, tmp_path, capsys):
    assert cli(["model-card", "--run", str(tiny_run)]) == 0
    assert capsys.readouterr().out == model_card(tiny_run)
    (tmp_path / "empty").mkdir()
    assert cli(["model-card", "--run", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not a run folder" in err and len(err.splitlines()) == 1
    half = tmp_path / "half"
    shutil.copytree(tiny_run, half)
    (half / "status.json").write_text('{"state": "running", "pid": 999999999}')
    assert cli(["model-card", "--run", str(half)]) == 2
    assert "has not completed" in capsys.readouterr().err


def _card_widgets(at: AppTest) -> tuple[list[str], list[str]]:
    return [e.label for e in at.expander], [b.proto.label for b in at.get("download_button")]


def test_compare_page_shows_a_card_per_run(tiny_run, monkeypatch):
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(tiny_run.parent))
    at = AppTest.from_file(str(PAGES / "compare.py"), default_timeout=60)
    at.run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    expanders, buttons = _card_widgets(at)
    assert f"Model card — {tiny_run.name}" in expanders and "Download the model card (Markdown)" in buttons
    assert any(m.value.strip() == model_card(tiny_run).strip() for m in at.markdown)  # the whole card, as made


def test_diagnosis_page_shows_the_chosen_models_card(tiny_run, monkeypatch, tmp_path):
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(tiny_run.parent))
    monkeypatch.setenv("CXRDEMO_WEIGHTS_DIR", str(tmp_path))  # no demo model: the run is preselected
    at = AppTest.from_file(str(PAGES / "diagnosis.py"), default_timeout=60)
    at.run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    expanders, buttons = _card_widgets(at)
    assert "Model card" in expanders and "Download the model card (Markdown)" in buttons
    assert any(m.value.strip() == model_card(tiny_run).strip() for m in at.markdown)  # the whole card, as made


def test_card_only_rewrites_the_demo_card_without_touching_the_weights(tmp_path, capsys):
    out = tmp_path / "demo"
    shutil.copytree(SHIPPED_DEMO, out)
    (out / "MODEL_CARD.md").unlink()
    weights = (out / "model.pt").read_bytes()
    assert cli(["demo-model", "--card-only", "--out", str(out)]) == 0
    assert (out / "MODEL_CARD.md").read_text() == (SHIPPED_DEMO / "MODEL_CARD.md").read_text()
    assert (out / "model.pt").read_bytes() == weights
    assert cli(["demo-model", "--out", str(out)]) == 2  # neither --data nor --card-only
    assert "needs --data" in capsys.readouterr().err


def test_a_labelled_extra_set_leads_the_card_when_shifted(tiny_run, capsys):
    data = runs.read_json(tiny_run / "config.json")["config"]["data"]
    assert cli(["model-card", "--run", str(tiny_run), "--eval", f"{data}:test:shifted"]) == 0
    text = capsys.readouterr().out
    assert text.index(f"| {Path(data).name}/test | shifted | 20 (10 : 10) |") < text.index("| its test split |")
    assert "this run's own test split only" not in text
