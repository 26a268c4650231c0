"""Lessons: the built-in lesson sets, the options lessons use (share, split, marker, tag), the catalog, each
lesson's result view on fabricated finished runs, and the Lessons page under AppTest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from cxrdemo.config import TrainConfig
from cxrdemo.data import scan_dataset
from cxrdemo.data.marker import burn_marker, choose_marked, mark_images
from cxrdemo.errors import ConfigError
from cxrdemo.runs import examples, jobs, lifecycle
from cxrdemo.runs import store as runs
from cxrdemo.views import lesson_results, lessons

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "lessons.py")


# ---------------------------------------------------------------- data and options

def test_lesson_sets_keep_patients_apart_and_image_split_leaks():
    bv = scan_dataset("lesson:bacteria_virus")
    assert bv.classes == ("BACTERIA", "VIRUS")
    assert {s: sum(c.values()) for s, c in bv.counts().items()} == {"train": 240, "val": 60, "test": 100}
    assert not bv.notes  # no patient in two splits
    vn = scan_dataset("lesson:virus_normal")  # the transfer lesson's related task, built the same way
    assert vn.classes == ("NORMAL", "VIRUS") and not vn.notes
    assert {s: sum(c.values()) for s, c in vn.counts().items()} == {"train": 240, "val": 60, "test": 100}
    by_patient = scan_dataset("lesson:leakage")
    by_image = scan_dataset("lesson:leakage", by_patient=False)
    assert not any("more than one split" in n for n in by_patient.notes)
    assert any("more than one split" in n for n in by_image.notes)
    # every leakage training film is there twice, the duplicate named for the same child
    train = [Path(p).name for p, _ in by_patient.splits["train"] + by_patient.splits["val"]]
    dups = [n for n in train if n.endswith("_dup.jpg")]
    assert dups and len(dups) * 2 == len(train) and all(n.replace("_dup.jpg", ".jpg") in train for n in dups)
    share = scan_dataset("lesson:bacteria_virus", train_share=0.1).counts()["train"]
    assert share == {"BACTERIA": 12, "VIRUS": 12}


def test_new_options_validate_and_round_trip():
    c = TrainConfig(train_share=0.25, split_by="image", marker="VIRUS:0.9", tag="lesson:x:y")
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig.from_dict({"data": "demo"}).tag == ""  # an old config.json still loads
    for bad in ({"train_share": 0.0}, {"split_by": "ward"}, {"marker": "VIRUS"}, {"marker": "VIRUS:1.5"}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    with pytest.raises(Exception, match="no built-in lesson set"):
        scan_dataset("lesson:nope")


def test_marker_is_burned_into_the_chosen_share_of_one_class_only():
    images = torch.full((10, 1, 64, 64), 100, dtype=torch.uint8)
    labels = torch.tensor([0, 1] * 5)
    idx = choose_marked(labels, 1, 0.6, seed=3)
    assert idx == choose_marked(labels, 1, 0.6, seed=3) and len(idx) == 3 and all(labels[i] == 1 for i in idx)
    out = mark_images(images, labels, 1, 0.6, seed=3)
    changed = [i for i in range(10) if not torch.equal(out[i], images[i])]
    assert changed == idx
    assert torch.equal(images, torch.full_like(images, 100))  # the (memoised) input is never changed
    tag = burn_marker(images[:1])[0, 0]
    assert (tag == 255).any() and (tag == 0).any() and tag[40:, 40:].eq(100).all()  # top-left only


# ---------------------------------------------------------------- catalog

def test_every_lesson_plans_tagged_runs_within_fifteen_minutes(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRDEMO_CACHE_DIR", str(tmp_path))  # the reference machine's speed, not this busy one's trials
    planned = {k: len(lessons.recipes(lesson)) for k, lesson in lessons.LESSONS.items()}
    assert planned["transfer"] == 9 and planned["shortcut"] == 3 and planned["leakage"] == 4
    assert planned["freeze"] >= 6
    for lesson in lessons.LESSONS.values():
        tags = [r.config.tag for r in lessons.recipes(lesson)]
        assert len(set(tags)) == len(tags) and all(t.startswith(lesson.tag + ":") for t in tags)
        est = lessons.estimate(lesson, [])  # no example runs: image counts x pixels / the throughput constants
        assert est.measured == 0 and 10 * est.planned < est.seconds <= 15 * 60


def test_tiny_override_shrinks_every_run(monkeypatch):
    monkeypatch.setenv(lessons.TINY_ENV, "1")
    for lesson in lessons.LESSONS.values():
        assert {(r.config.img_size, r.config.max_images) for r in lessons.recipes(lesson)} == {(32, 8)}
        # one epoch each, except that smaller training shares get as many steps (transfer: 10% -> 10 epochs)
        assert {r.config.epochs for r in lessons.recipes(lesson)} == (
            {1, 3} if lesson.key == "transfer" else {1})


# ---------------------------------------------------------------- results on fabricated runs

def fabricate(lesson: lessons.Lesson, root: Path, rng: np.random.Generator) -> None:
    """A finished run for every recipe, written through the store and the lifecycle (no training)."""
    for r in lessons.recipes(lesson):
        d = runs.create_run(r.config, root, name=r.key)
        n_train = round(240 * r.config.train_share)
        meta = runs.read_json(d / "config.json")
        runs.atomic_write_json(d / "config.json", {**meta, "dataset": {
            "classes": ["BACTERIA", "VIRUS"], "totals": {"train": n_train, "val": 40, "test": 60}}})
        for epoch in (1, 2):
            runs.append_metrics(d, {"epoch": epoch, "train_loss": 0.7 / epoch, "val_loss": 0.8 / epoch,
                                    "train_acc": 0.6, "val_acc": 0.9 if "image" in r.key else 0.7,
                                    "seconds": 2.0, "trainable_params": 1000 * epoch, "frozen_groups": 0})
        y = np.array([0, 1] * 30)
        correct = rng.random(60) < 0.7
        p1 = np.where(correct == (y == 1), 0.8, 0.2)
        test = {"accuracy": float(correct.mean()), "auroc": 0.75, "micro_recall": float(correct.mean()),
                "best_epoch": 2, "threshold": 0.5, "classes": ["BACTERIA", "VIRUS"], "y_true": y.tolist(),
                "probs": np.stack([1 - p1, p1], 1).tolist()}
        if r.config.marker:
            test["marked"] = {"accuracy": 0.5, "probs": [[0.1, 0.9]] * 60}
        runs.atomic_write_json(d / "test_metrics.json", test)
        lifecycle.claim(d)
        lifecycle.finish(d, "completed")


@pytest.mark.parametrize("key", list(lessons.LESSONS))
def test_result_view_of_each_lesson(key, tmp_path):
    lesson = lessons.LESSONS[key]
    fabricate(lesson, tmp_path, np.random.default_rng(0))
    infos = runs.list_runs(tmp_path)
    assert lessons.progress(lesson, infos)["completed"] == len(lessons.recipes(lesson))
    result = lesson_results.lesson_result(lesson, infos)
    assert len(result.table) == len(lessons.recipes(lesson)) and result.figures and result.headline
    if key == "shortcut":
        assert result.table["called VIRUS (marked)"].tolist()[1:] == [1.0, 1.0]
        assert "marked 50.0%" in result.headline
    if key == "leakage":
        assert "Split by image: validation overstates" in result.headline and "Split by patient" in result.headline
    if key == "transfer":
        assert result.table["training images"].tolist()[:3] == [24, 60, 240]


def test_leakage_gap_interval_covers_the_truth_and_says_when_it_is_zero():
    rng = np.random.default_rng(1)
    leaky = [(0.95, 40, rng.random(80) < 0.7) for _ in range(3)]
    gap, lo, hi = lesson_results.leakage_gap(leaky)
    assert 0.15 < gap < 0.35 and lo > 0.1 and hi < 0.45
    honest = [(0.7, 40, rng.random(80) < 0.7) for _ in range(3)]
    gap, lo, hi = lesson_results.leakage_gap(honest)
    assert lo < 0 < hi


# ---------------------------------------------------------------- the page

def page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize("key", list(lessons.LESSONS))
def test_page_starts_each_lesson_through_the_job_system(key, store, monkeypatch):
    monkeypatch.setenv(lessons.TINY_ENV, "1")
    submitted = []

    def launch(d, root, max_jobs=None, backend="local"):  # the real submit path, without a process
        submitted.append(TrainConfig.from_dict(runs.load_run(d).config))

    monkeypatch.setattr(jobs, "launch", launch)
    from cxrdemo.runs import sources

    monkeypatch.setattr(sources, "check_startable", lambda config, root=None: None)  # no demo model in this store
    at = page()
    assert "Not run yet" in "\n".join(i.value for i in at.info)
    at.button(key=f"start-{key}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(submitted) == len(lessons.recipes(lessons.LESSONS[key]))
    assert all(c.tag.startswith(f"lesson:{key}:") and c.img_size == 32 for c in submitted)
    assert at.button(key=f"start-{key}").disabled  # queued: the store says so, not the session
    assert any("waiting or training" in str(p.proto.text) for p in at.get("progress"))


@pytest.mark.slow
def test_page_shows_each_result_view(store):
    for i, lesson in enumerate(lessons.LESSONS.values()):
        fabricate(lesson, store, np.random.default_rng(i))
    at = page()
    shown = "\n".join(m.value for m in at.markdown)
    assert shown.count("**Result.**") == len(lessons.LESSONS)
    assert "What to look for" in shown and "validation overstates" in shown
    assert len(at.dataframe) == len(lessons.LESSONS)


def test_shipped_examples_are_marked_and_keep_no_weights_or_machine_paths(tmp_path):
    lesson = lessons.LESSONS["shortcut"]
    fabricate(lesson, tmp_path / "work", np.random.default_rng(0))
    for info in runs.list_runs(tmp_path / "work"):
        (info.path / "model.pt").write_bytes(b"weights")
        examples.copy_as_example(info.path, tmp_path / "examples")
    shipped = examples.list_examples(tmp_path / "examples")
    assert len(shipped) == 3 and all(i.example for i in shipped)
    assert not any((i.path / "model.pt").exists() for i in shipped)
    assert all(i.meta["dataset"]["root"] == "lesson:bacteria_virus" for i in shipped)
    assert lesson_results.lesson_result(lesson, shipped).table["clean accuracy"].notna().all()


def test_transfer_runs_on_fewer_images_train_for_more_epochs_up_to_three_times():
    from cxrdemo.views import lessons

    plan = {r.key: r.config for r in lessons.recipes(lessons.LESSONS["transfer"])}
    full = plan["scratch-100"].epochs
    assert [plan[f"scratch-{s}"].epochs for s in (10, 25, 100)] == [3 * full, 3 * full, full]
    assert lessons.equal_steps_epochs(8, 0.5) == 16 and lessons.equal_steps_epochs(8, 1.0) == 8
