"""The one duration estimator (runs/durations): training speed, starting a run, sweeps, lessons and slow heatmaps."""

import json

import pytest

from cxrdemo.config import TrainConfig
from cxrdemo.runs import durations, lifecycle
from cxrdemo.runs import store as runs
from cxrdemo.views import lessons, sweep_cost


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDEMO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def finished_run(root, waited: float, wall: float, epoch_seconds: tuple[float, ...]) -> None:
    """A completed run of the store whose worker claimed it `waited` s after submit and finished `wall` s later."""
    d = runs.create_run(TrainConfig(data="demo", epochs=len(epoch_seconds)), root)
    for epoch, s in enumerate(epoch_seconds, 1):
        runs.append_metrics(d, {"epoch": epoch, "seconds": s})
    lifecycle.claim(d)
    lifecycle.finish(d, "completed")
    t0 = 1_000_000.0
    runs.write_status(d, created=t0, started=t0 + waited, finished=t0 + waited + wall)


# ---------------------------------------------------------------- training speed

def test_training_seconds_follow_the_table_epochs_and_image_size():
    r18 = TrainConfig(data="demo", backbone="resnet18", freeze="none", epochs=10, img_size=224)
    per = durations.REFERENCE["resnet18"]["none"]
    assert durations.training_seconds(r18, 900, 90) == pytest.approx(10 * per * (900 + 30))
    half = r18.replace(img_size=112)  # a quarter of the pixels
    assert durations.training_seconds(half, 900, 90) == pytest.approx(durations.training_seconds(r18, 900, 90) / 4)
    head = r18.replace(freeze="head")  # the trunk runs once, whatever the epochs
    assert durations.training_seconds(head, 900, 90) == pytest.approx(durations.REFERENCE["resnet18"]["head"] * 990)
    capped = r18.replace(max_images=300)
    assert durations.training_seconds(capped, 900, 90) == pytest.approx(10 * per * (300 + 30))


def test_speed_is_this_computers_measurement_then_its_trials_then_the_reference(cache):
    assert durations.training_speed() == durations.REFERENCE_SPEED
    # A remembered trial: resnet18, nothing frozen, 224 px, batch 32, twice as slow as the reference.
    step = 2 * 32 * durations.REFERENCE["resnet18"]["none"]
    (cache / "speed").mkdir(parents=True)
    (cache / "speed" / "x.json").write_text(json.dumps({
        "key": {"backbone": "resnet18", "frozen_groups": 0, "batch_size": 32, "img_size": 224},
        "choice": {"bf16": True, "channels_last": True, "step_s": {"bf16-channels-last": step}}}))
    scaled = durations.training_speed()
    assert scaled.source == "scaled" and scaled.factor == pytest.approx(2.0)
    r18 = TrainConfig(data="demo", backbone="resnet18", epochs=10)
    assert durations.training_seconds(r18, 900, 90, scaled) == pytest.approx(2 * durations.training_seconds(r18, 900, 90))
    durations.save_measured({"cpu": "Test CPU 9000", "date": "2026-11-28", "img_size": 224,
                             "per_image_s": {"resnet18": {"3": 0.04, "none": 0.08, "head": 0.01}}})
    mine = durations.training_speed()
    assert (mine.source, mine.cpu, mine.factor) == ("measured", "Test CPU 9000", 1.0)
    # 112 px is a quarter of 224 px's pixels: 10 epochs x 0.02 s x (900 + 90 / 3) images
    assert durations.training_seconds(r18.replace(img_size=112), 900, 90, mine) == pytest.approx(10 * 0.02 * 930)
    (cache / durations.MEASURED_FILE).write_text("{not json")
    assert durations.training_speed().source == "scaled"


# ---------------------------------------------------------------- starting a run

def test_an_empty_store_starts_runs_at_the_reference_figures(tmp_path):
    start = durations.run_start(tmp_path / "runs")
    assert start == durations.REFERENCE_START and start.runs == 0
    assert start.seconds == durations.REFERENCE_PROCESS_S + durations.REFERENCE_SETUP_S >= 20  # the 25-50 s observed


def test_start_up_is_measured_from_this_stores_finished_runs(tmp_path):
    root = tmp_path / "runs"
    finished_run(root, waited=7.5, wall=104.5, epoch_seconds=(30.0, 33.0))  # set-up 41.5 s, no queue wait
    finished_run(root, waited=95.0, wall=50.0, epoch_seconds=(20.0, 18.0))  # waited behind it; set-up 12 s
    finished_run(root, waited=0.0, wall=40.0, epoch_seconds=(15.0, 15.0))  # trained in-process; set-up 10 s
    start = durations.run_start(root)
    assert start.runs == 3 and start.process_s == pytest.approx(7.5)  # the quickest claim: no queue in it
    assert start.setup_s == pytest.approx(12.0)  # the median run's
    assert start.seconds == pytest.approx(19.5)


def test_twelve_short_runs_no_longer_read_about_one_minute(tmp_path):
    cfgs = [TrainConfig(data="demo", backbone="cnn5", epochs=2, img_size=64) for _ in range(12)]
    epochs_only = durations.sweep_seconds(cfgs, 200, 50)
    assert epochs_only < 60
    start = durations.run_start(tmp_path / "runs")
    total = durations.sweep_seconds(cfgs, 200, 50, durations.REFERENCE_SPEED, start)
    assert total == pytest.approx(epochs_only + 12 * start.seconds)
    text = sweep_cost.sweep_cost_text(cfgs, 200, 50, tmp_path / "runs")
    assert total > 5 * 60  # 25-50 s to start each run was left out before
    assert text.startswith(f"12 run(s), one after another: about {round(total / 60)} min on a 2-core Intel Xeon with "
                           "AMX, the reference PC")
    assert f"each run adds about {round(start.seconds)} s to start and finish" in text
    assert durations.REFERENCE_START_CPU in text


# ---------------------------------------------------------------- lessons and heatmaps use the same numbers

def test_a_lesson_without_examples_is_its_runs_epochs_plus_starting_each(tmp_path, monkeypatch):
    monkeypatch.setenv(lessons.TINY_ENV, "1")
    lesson = lessons.LESSONS["shortcut"]
    est = lessons.estimate(lesson, [], tmp_path / "runs")
    plan = lessons.recipes(lesson)
    assert est.measured == 0 and est.start == durations.REFERENCE_START and est.speed == durations.REFERENCE_SPEED
    epochs = [lessons._estimated_seconds(r.config, est.speed) for r in plan]
    assert all(e > 0 for e in epochs)
    assert est.seconds == pytest.approx(sum(epochs) + len(plan) * est.start.seconds)
    assert "the reference PC" in lessons.estimate_words(lesson, est)


def test_slow_heatmaps_take_one_batch_per_group_of_feature_maps():
    assert durations.cam_seconds("GradCAM", 0.5, 512, 32) is None
    assert durations.cam_seconds("ScoreCAM", 0.5, 512, 32) == pytest.approx(8.0)  # 16 batches
    assert durations.cam_seconds("ScoreCAM", 0.5, 100, 32) == pytest.approx(2.0)  # 4 batches, the last one short


# ---------------------------------------------------------------- the store's own runs come first (issue 31)

def speed_run(root, factor: float, train: int = 300, val: int = 60, epochs: int = 2) -> None:
    """A finished cnn5 run at 128 px whose epochs took `factor` times what the reference table predicts."""
    cfg = TrainConfig(data="demo", backbone="cnn5", img_size=128, epochs=epochs)
    d = runs.create_run(cfg, root, scan_summary={"totals": {"train": train, "val": val, "test": 10}})
    per_epoch = factor * durations.training_seconds(cfg.replace(epochs=1), train, val)
    for epoch in range(1, epochs + 1):
        runs.append_metrics(d, {"epoch": epoch, "seconds": per_epoch})
    lifecycle.claim(d)
    lifecycle.finish(d, "completed")


def test_the_stores_latest_runs_outrank_a_stale_trial(cache, tmp_path):
    # A trial remembered from a loaded hour: 19x the reference (the 2026-12-06 case that made 1,428 s of 280).
    step = 19 * 32 * durations.per_image_seconds("cnn5", "none", 128)
    (cache / "speed").mkdir(parents=True)
    (cache / "speed" / "x.json").write_text(json.dumps({
        "key": {"backbone": "cnn5", "frozen_groups": 0, "batch_size": 32, "img_size": 128},
        "choice": {"bf16": False, "channels_last": False, "step_s": {"fp32-contiguous": step}}}))
    root = tmp_path / "runs"
    assert durations.training_speed(root).source == "scaled"  # no finished run here yet: the trial is the evidence
    for f in (2.0, 3.0, 2.5):
        speed_run(root, f)
    speed = durations.training_speed(root)
    assert (speed.source, speed.runs) == ("runs", 3) and speed.factor == pytest.approx(2.5)  # the median
    cfg = TrainConfig(data="demo", backbone="cnn5", img_size=128, epochs=8)
    assert durations.training_seconds(cfg, 300, 60, speed) == pytest.approx(2.5 * durations.training_seconds(cfg, 300, 60))
    assert "at the speed its last 3 finished run(s) trained" in sweep_cost.speed_words(speed)
    est = lessons.estimate(lessons.LESSONS["leakage"], [], root)
    assert est.speed == speed  # the lesson's estimate reads the same evidence
