"""The sweep estimate shown before the click: runs/durations' numbers in words (tests/test_durations.py: numbers)."""

import json

import pytest

from cxrdemo.config import TrainConfig
from cxrdemo.runs import durations
from cxrdemo.views import sweep_cost
from cxrdemo.views.trainer import rough_duration


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDEMO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_text_uses_this_computers_trial_when_there_is_one(cache, tmp_path):
    store = tmp_path / "runs"
    cfgs = [TrainConfig(data="demo", backbone=b, freeze=f, epochs=10) for b in ("cnn5", "resnet18", "densenet121")
            for f in ("head", "3", "none")]
    text = sweep_cost.sweep_cost_text(cfgs, 4353, 488, store)
    assert text.startswith("9 run(s)") and "reference PC" in text
    epochs_s = durations.sweep_seconds(cfgs, 4353, 488)
    assert f"about {(epochs_s + 9 * durations.REFERENCE_START.seconds) / 3600:.1f} h" in text
    step = 2 * 32 * durations.REFERENCE["resnet18"]["none"]  # a trial twice as slow as the reference
    (cache / "speed").mkdir(parents=True)
    (cache / "speed" / "x.json").write_text(json.dumps({
        "key": {"backbone": "resnet18", "frozen_groups": 0, "batch_size": 32, "img_size": 224},
        "choice": {"bf16": True, "channels_last": True, "step_s": {"bf16-channels-last": step}}}))
    text = sweep_cost.sweep_cost_text(cfgs, 4353, 488, store)
    assert "this computer, scaled" in text
    assert f"about {(2 * epochs_s + 9 * durations.REFERENCE_START.seconds) / 3600:.1f} h" in text


def test_this_computers_sweep_measurement_wins_and_names_its_cpu(cache, tmp_path):
    cfgs = [TrainConfig(data="demo", backbone="resnet18", freeze=f, epochs=10, img_size=112) for f in ("3", "none")]
    durations.save_measured({"cpu": "Test CPU 9000", "date": "2026-11-28", "img_size": 224,
                             "per_image_s": {"resnet18": {"3": 0.04, "none": 0.08, "head": 0.01}}})
    text = sweep_cost.sweep_cost_text(cfgs, 900, 90, tmp_path / "runs")
    seconds = 10 * 0.03 * 930 + 2 * durations.REFERENCE_START.seconds
    assert "measured on Test CPU 9000 on 2026-11-28" in text and f"about {round(seconds / 60)} min" in text
    (cache / durations.MEASURED_FILE).write_text("{not json")
    assert "reference PC" in sweep_cost.sweep_cost_text(cfgs, 900, 90, tmp_path / "runs")


def test_nothing_to_run_says_nothing():
    assert sweep_cost.sweep_cost_text([], 900, 90) == ""
    assert sweep_cost.sweep_cost_text([TrainConfig(data="demo")], 0, 90) == ""


def test_rough_durations_are_as_precise_as_an_estimate():
    assert [rough_duration(s) for s in (0.2, 42.4, 89, 7199, 7200, 9000)] == \
        ["1 s", "42 s", "1 min", "120 min", "2.0 h", "2.5 h"]
