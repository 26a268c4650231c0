"""The demo-model command: trains the recipe as a normal run, evaluates with bootstrap CIs, installs atomically."""

import json
import shutil

import pytest

from cxrdemo import paths
from cxrdemo.cli.demo_model import DEMO_RECIPE, DEMO_STAGES, build_demo_model
from cxrdemo.cli.main import main as cli
from cxrdemo.diagnosis import predict
from cxrdemo.runs import store as runs

TINY = dict(backbone="cnn8", img_size=32, epochs=1, batch_size=8, threads=1)


@pytest.fixture
def env(store, tmp_path):
    """The folder holding conftest's private store (runs/, cache/, an empty weights/): the demo model installs there."""
    return tmp_path


def test_recipe_trains_without_imagenet_and_picks_a_threshold_on_val():
    assert DEMO_RECIPE["init"] == "scratch" and DEMO_RECIPE["threshold"] == "spec:0.95"
    assert all("init" not in stage for stage in DEMO_STAGES[1:])  # later stages start from the previous run


@pytest.mark.slow
def test_build_installs_model_card_and_intervals(env, tiny_dataset):
    test_only = env / "shifted"
    shutil.copytree(tiny_dataset / "test", test_only / "test")  # an evaluation-only set, like cxr-shift
    card = build_demo_model(str(tiny_dataset), [(str(tiny_dataset), "test", "in-distribution"),
                                                   (str(test_only), "test", "shifted")], **TINY)
    out = paths.demo_run_dir()
    assert {"model.pt", "config.json", "metrics.csv", "MODEL_CARD.md", "evaluation.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".demo-")]  # staging folder renamed away
    installed = json.loads((out / "evaluation.json").read_text())
    assert installed["run_id"] == card["run_id"] and (env / "runs" / card["run_id"] / "model.pt").is_file()
    first, last = card["stages"]  # progressive resizing: stage 2 starts from stage 1's weights
    assert last["run_id"] == card["run_id"] and last["recipe"]["init"] == f"run:{first['run_id']}"
    assert first["recipe"]["init"] == "scratch" and "trunk and head" in runs.read_json(
        env / "runs" / last["run_id"] / "config.json")["init_note"]
    e1, e2 = card["evaluations"]
    assert e1["n"] == e2["n"] == 8 and e1["counts"] == [4, 4]
    assert e1["metrics"] == e2["metrics"]  # same images, same model
    for key in ("accuracy", "sensitivity", "specificity", "auroc"):
        lo, hi = e1["ci95"][key]
        assert lo <= e1["metrics"][key] <= hi
    text = (out / "MODEL_CARD.md").read_text()
    assert "not for clinical use" in text and "python -m cxrdemo demo-model" in text and "shifted/test" in text
    assert text.index("| shifted/test") < text.index(f"| {tiny_dataset.name}/test")  # the shifted set leads
    assert f"--eval {test_only.name}:test:shifted" in text and "bias-corrected temperature scaling" in text and "T = " in text
    assert "## In-domain check" in text and "validation images stay under" in text
    assert f"| shifted/test | {e2['calibration']['ece_before']:.3f} (" in text  # ECE per set, on the card
    assert 0 <= e2["calibration"]["ece_after"] <= 1 and [c["level"] for c in e2["coverage"]] == [0.9, 0.95]
    # `--run demo` now names it everywhere
    model = predict.load_model("demo")
    assert model.classes == ("NORMAL", "PNEUMONIA") and model.decision.value is not None
    assert runs.run_dir("demo") == out


@pytest.mark.slow
def test_cli_demo_model_then_run_demo_everywhere(env, tiny_dataset, capsys):
    out = env / "weights" / "demo"
    assert cli(["demo-model", "--data", str(tiny_dataset), "--eval", f"{tiny_dataset}:test", "--epochs", "1",
                "--threads", "1", "--quiet"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["evaluations"][0]["data"] == str(tiny_dataset) and 0 <= line["evaluations"][0]["accuracy"] <= 1
    assert (out / "model.pt").is_file()
    assert cli(["evaluate", "--run", "demo", "--data", str(tiny_dataset)]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["accuracy"] == pytest.approx(line["evaluations"][0]["accuracy"])
    image = next((tiny_dataset / "test" / "NORMAL").iterdir())
    assert cli(["predict", "--run", "demo", str(image)]) == 0
    assert set(json.loads(capsys.readouterr().out.strip())["probabilities"]) == {"NORMAL", "PNEUMONIA"}


def test_missing_demo_model_is_a_sentence(env):
    with pytest.raises(runs.RunError, match="demo model is missing"):
        runs.run_dir("demo")
