"""The sweep estimate shown before the click: arithmetic from the reference table, scaled by this computer's trials."""

import json

import pytest

from cxrdemo.config import TrainConfig
from cxrdemo.views import sweep_cost


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDEMO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_seconds_follow_the_table_epochs_and_image_size():
    r18 = TrainConfig(data="demo", backbone="resnet18", freeze="none", epochs=10, img_size=224)
    per = sweep_cost.REFERENCE["resnet18"]["none"]
    assert sweep_cost.sweep_seconds([r18], 900, 90) == pytest.approx(10 * per * (900 + 30))
    half = r18.replace(img_size=112)
    assert sweep_cost.sweep_seconds([half], 900, 90) == pytest.approx(sweep_cost.sweep_seconds([r18], 900, 90) / 4)
    head = r18.replace(freeze="head")  # the trunk runs once, whatever the epochs
    assert sweep_cost.sweep_seconds([head], 900, 90) == pytest.approx(sweep_cost.REFERENCE["resnet18"]["head"] * 990)


def test_text_uses_this_computers_trial_when_there_is_one(cache):
    cfgs = [TrainConfig(data="demo", backbone=b, freeze=f, epochs=10) for b in ("cnn5", "resnet18", "densenet121")
            for f in ("head", "3", "none")]
    text = sweep_cost.sweep_cost_text(cfgs, 4353, 488)
    assert text.startswith("9 run(s)") and "reference PC" in text
    ref_s = sweep_cost.sweep_seconds(cfgs, 4353, 488)
    # A remembered trial: resnet18, nothing frozen, 224 px, batch 32, twice as slow as the reference.
    step = 2 * 32 * sweep_cost.REFERENCE["resnet18"]["none"]
    (cache / "speed").mkdir(parents=True)
    (cache / "speed" / "x.json").write_text(json.dumps({
        "key": {"backbone": "resnet18", "frozen_groups": 0, "batch_size": 32, "img_size": 224},
        "choice": {"bf16": True, "channels_last": True, "step_s": {"bf16-channels-last": step}}}))
    assert sweep_cost.machine_factor() == pytest.approx(2.0)
    text = sweep_cost.sweep_cost_text(cfgs, 4353, 488)
    assert "this computer" in text and f"{2 * ref_s / 3600:.1f} h" in text


def test_this_computers_sweep_measurement_wins_and_names_its_cpu(cache):
    cfgs = [TrainConfig(data="demo", backbone="resnet18", freeze=f, epochs=10, img_size=112) for f in ("3", "none")]
    sweep_cost.save_measured({"cpu": "Test CPU 9000", "date": "2026-11-28", "img_size": 224,
                              "per_image_s": {"resnet18": {"3": 0.04, "none": 0.08, "head": 0.01}}})
    # 112 px is a quarter of 224 px's pixels: 10 epochs x (0.01 + 0.02) s x (900 + 90 / 3) images
    assert sweep_cost.sweep_seconds(cfgs, 900, 90, 1.0, sweep_cost.measured()["per_image_s"], 224) == \
        pytest.approx(10 * (0.01 + 0.02) * 930)
    text = sweep_cost.sweep_cost_text(cfgs, 900, 90)
    assert "Test CPU 9000" in text and f"about {round(10 * 0.03 * 930 / 60)} min" in text
    (cache / sweep_cost.MEASURED_FILE).write_text("{not json")
    assert sweep_cost.measured() is None and "reference PC" in sweep_cost.sweep_cost_text(cfgs, 900, 90)
