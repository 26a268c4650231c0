"""The Trainer page under Streamlit's AppTest: form, dataset report, start, sweep and the live jobs panel."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cxrdemo import data, fileio
from cxrdemo.config import TrainConfig
from cxrdemo.model import backbones
from cxrdemo.runs import jobs
from cxrdemo.runs import store as runs
from cxrdemo.views import trainer as trainer_view
from cxrdemo.views import recipe, trainer_form
from tests.helpers import fake_status

REPO = Path(__file__).resolve().parents[1]
PAGE = str(REPO / "app_pages" / "trainer.py")
APP = str(REPO / "app.py")




@pytest.fixture
def fake_submit(monkeypatch, store):
    """The real submit path (policy, queue, run folder) without a process: for page wiring tests."""
    submitted: list[TrainConfig] = []

    def launch(d, root, max_jobs=None, backend="local"):
        submitted.append(TrainConfig.from_dict(runs.load_run(d).config))

    monkeypatch.setattr(jobs, "launch", launch)
    return submitted


def page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def use_folder(at: AppTest, folder) -> AppTest:
    at.radio(key="source").set_value("A folder on this computer").run()
    at.text_input(key="data_path").input(str(folder)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_page_renders_demo_report_registry_and_freeze_counts(store):
    at = page()
    assert not at.error, texts(at.error)
    (table,) = at.dataframe
    counts = data.scan_dataset("demo").counts()
    assert table.value["total"].tolist() == [sum(c.values()) for c in counts.values()]
    sel = at.selectbox(key="backbone")
    assert sel.value == "resnet18" and len(sel.options) == len(backbones.backbone_names())
    trunk = sum(backbones.group_param_counts("resnet18")[:-1])  # the trunk: the same whatever the class count
    assert f"{trunk:,} trunk parameters" in sel.options[sel.index]
    # ImageNet weights are not on this machine: say which file goes where, start from scratch instead.
    assert at.selectbox(key="init").value == "scratch"
    note = texts(at.info)
    assert backbones.imagenet_weight_file("resnet18") in note and "weights" in note
    assert trainer_form.trainable_text("resnet18", "none") in texts(at.caption)
    at.selectbox(key="freeze").set_value("head").run()
    total, trainable = backbones.param_counts("resnet18", 2, "head")
    assert trainable < total and f"{trainable:,} of {total:,}" in texts(at.caption)
    assert at.selectbox(key="freeze").options[:3] == list(trainer_form.freeze_options("resnet18").values())[:3]
    assert "No training jobs yet" in texts(at.info)


def test_bad_folder_shows_a_sentence_and_start_is_disabled(store, tmp_path):
    at = use_folder(page(), tmp_path / "no-such-folder")
    assert "does not exist" in texts(at.error)
    assert at.button(key="start").disabled
    assert not at.dataframe


def test_start_queues_a_real_job_and_the_panel_shows_it(store, tiny_dataset):
    at = use_folder(page(), tiny_dataset)
    assert not at.error, texts(at.error)
    at.selectbox(key="backbone").set_value("cnn8").run()
    at.selectbox(key="img_size").set_value(64)
    at.number_input(key="epochs").set_value(200)
    at.number_input(key="batch_size").set_value(8)
    at.number_input(key="patience").set_value(0)
    at.button(key="start").click().run()
    assert not at.exception and not at.error, texts(at.error)
    (info,) = runs.list_runs(store)
    assert info.config["backbone"] == "cnn8" and info.config["epochs"] == 200 and info.config["img_size"] == 64
    assert info.config["data"] == str(tiny_dataset) and info.config["lr"] == pytest.approx(1e-3)
    assert info.run_id in texts(at.success) and info.run_id in texts(at.markdown)
    assert at.get("progress")  # active job: a progress bar
    # Another tab (a fresh session) sees the same job: the run store is the only state.
    other = page()
    assert info.run_id in texts(other.markdown)
    other.button(key=f"cancel-{info.run_id}").click().run()
    assert runs.read_status(info.path)["state"] == "cancelled"


def test_sweep_queues_the_whole_grid(store, tiny_dataset, fake_submit):
    at = use_folder(page(), tiny_dataset)
    at.multiselect(key="sweep_backbones").set_value(["cnn8", "cnn5"])
    at.multiselect(key="sweep_freezes").set_value(["none", "head", "3"]).run()
    at.button(key="sweep").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert sorted((c.backbone, str(c.freeze)) for c in fake_submit) == sorted(
        (b, f) for b in ("cnn8", "cnn5") for f in ("none", "head", "3"))
    assert len(runs.list_runs(store)) == 6 and "Queued 6 runs" in texts(at.success)


def _fake_run(store: Path, state: str, epochs_done: int = 0, **status) -> Path:
    d = runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=4, img_size=64), store)
    for e in range(1, epochs_done + 1):
        runs.append_metrics(d, {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 0.5 + e / 10,
                                "val_acc": 0.5 + e / 20, "seconds": 2.0})
    fake_status(d, state=state, epochs=4, epoch=epochs_done + (state == "running"), **status)
    time.sleep(0.01)  # distinct creation times keep the order stable
    return d


@pytest.mark.slow
def test_panel_shows_every_state_and_links_through_the_router(store, fake_submit):
    done = _fake_run(store, "completed", 4, test_accuracy=0.875)
    failed = _fake_run(store, "failed", 1, error="The dataset has no validation images; add a val/ folder.")
    running = _fake_run(store, "running", 2, pid=os.getpid(), phase="train", batch=3, batches=6,
                        started=time.time() - 10)
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("app_pages/trainer.py").run()
    assert not at.exception, [e.value for e in at.exception]
    md = texts(at.markdown)
    assert all(d.name in md for d in (done, failed, running))
    assert "test accuracy 87.5%" in md
    assert "no validation images" in texts(at.error)
    (bar,) = at.get("progress")
    assert bar.proto.value == int(100 * (2 + 3 / 6) / 4)  # epoch 3 of 4, half its batches
    assert bar.proto.text == "epoch 3/4 · batch 3/6 · about 3 s left"  # mean epoch 2 s x 1.5 epochs
    links = [p.proto for p in at.get("page_link")]  # only the completed run links on
    assert [(p.page, p.query_string) for p in links] == [("compare", f"run={done.name}"),
                                                         ("diagnosis", f"run={done.name}")]
    charts = at.get("plotly_chart")  # loss and accuracy per run with finished epochs
    assert len(charts) == 3
    assert all('"Accuracy"' in c.proto.spec and '"Loss"' in c.proto.spec for c in charts)
    at.button(key=f"again-{failed.name}").click().run()
    assert not at.exception
    assert [c.to_dict() for c in fake_submit] == [TrainConfig.from_dict(runs.load_run(failed).config).to_dict()]


# ---------------------------------------------------------------- the view helpers behind the page

def test_progress_fraction_and_eta():
    running = {"state": "running", "epochs": 4, "epoch": 2, "phase": "train", "batch": 5, "batches": 10}
    assert trainer_view.progress_fraction(running) == pytest.approx(1.5 / 4)
    assert trainer_view.progress_fraction({**running, "phase": "val"}) == pytest.approx(2 / 4)
    assert trainer_view.progress_fraction({"state": "completed"}) == 1.0
    assert trainer_view.progress_fraction({"state": "queued"}) == 0.0
    rows = [{"seconds": "10"}, {"seconds": "20"}]
    assert trainer_view.eta_seconds(running, rows) == pytest.approx(2.5 * 15)
    # Before any epoch finished: elapsed time scaled by the fraction done.
    first = {**running, "epoch": 1, "started": 100.0}
    assert trainer_view.eta_seconds(first, [], now=110.0) == pytest.approx(10 * (1 - 0.125) / 0.125)
    assert trainer_view.eta_seconds({**running, "state": "queued"}, rows) is None
    assert [trainer_view.format_duration(s) for s in (42, 200, 3900, None)] == ["42 s", "3 min 20 s", "1 h 05 min", ""]


def test_freeze_options_follow_the_registry():
    opts = trainer_form.freeze_options("resnet18")
    stages = backbones.get_spec("resnet18").stage_names
    assert [k for k in opts if k.isdigit()] == [str(k) for k in range(1, len(stages))]
    assert "stem + layer1" in opts["2"]
    for level in opts:
        backbones.frozen_groups(level, "resnet18")  # every offered level is valid for the network
        TrainConfig(freeze=level)


def test_sweep_grid_skips_what_cannot_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDEMO_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(backbones, "imagenet_search_dirs", lambda: [tmp_path])
    base = TrainConfig(data="demo", init="imagenet", epochs=1)
    configs, notes = trainer_form.sweep_configs(base, ["cnn8", "cnn5", "resnet18"], ["none", "5"])
    # cnn8 has 4 trunk groups (freeze 5 is too high); resnet18 has no local ImageNet file.
    assert [(c.backbone, str(c.freeze), c.init) for c in configs] == [
        ("cnn8", "none", "scratch"), ("cnn5", "none", "scratch"), ("cnn5", "5", "scratch")]
    text = " ".join(notes)
    assert "cnn8 with freeze 5" in text and "resnet18 with freeze none" in text and "from scratch" in text
    # One run's weights fit one backbone: a sweep from a run starts every network from scratch, and says so.
    configs, notes = trainer_form.sweep_configs(base.replace(init="run:x"), ["cnn8"], ["none"])
    assert [c.init for c in configs] == ["scratch"] and "one run" in notes[0]


def test_init_options_offer_finished_runs_of_the_same_backbone(store):
    done8 = _fake_run(store, "completed", 2)
    (done8 / "model.pt").write_bytes(b"x")
    _fake_run(store, "failed", 1, error="boom")
    opts = trainer_form.init_options("cnn8", runs.list_runs(store))
    assert list(opts) == ["scratch", f"run:{done8.name}"] and "best val acc 60.0%" in opts[f"run:{done8.name}"]
    assert list(trainer_form.init_options("resnet18", runs.list_runs(store))) == ["imagenet", "scratch"]
    assert trainer_form.imagenet_note("cnn8") is None
    assert backbones.imagenet_weight_file("resnet18") in trainer_form.imagenet_note("resnet18")


def test_more_options_reach_the_recipe(store, tiny_dataset, fake_submit):
    at = use_folder(page(), tiny_dataset)
    at.selectbox(key="intensity").set_value("equalize")
    at.selectbox(key="threshold").set_value("val")
    at.number_input(key="ema").set_value(0.99)
    at.selectbox(key="head").set_value("fc512")
    at.number_input(key="dropout").set_value(0.3)
    at.selectbox(key="optimizer").set_value("sgd")
    at.button(key="start").click().run()
    assert not at.exception and not at.error, texts(at.error)
    (config,) = fake_submit
    assert (config.intensity, str(config.threshold), config.head, config.optimizer) == ("equalize", "val", "fc512", "sgd")
    assert config.ema == pytest.approx(0.99) and config.dropout == pytest.approx(0.3)


def test_settings_survive_a_page_switch_and_a_reload_from_the_url(store, tiny_dataset):
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("app_pages/trainer.py").run()
    use_folder(at, tiny_dataset)
    at.selectbox(key="backbone").set_value("cnn8").run()
    at.selectbox(key="img_size").set_value(64)
    at.number_input(key="epochs").set_value(3).run()
    at.switch_page("app_pages/compare.py").run()
    at.switch_page("app_pages/trainer.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert (at.selectbox(key="backbone").value, at.selectbox(key="img_size").value, at.number_input(key="epochs").value,
            at.text_input(key="data_path").value) == ("cnn8", 64, 3, str(tiny_dataset))
    assert "**3 epochs** on **64 px** images, starting **From scratch**" in texts(at.markdown)
    # A reload is a new session: the URL the page wrote carries the recipe (never another user's latest run).
    url = {k: v if isinstance(v, str) else v[0] for k, v in dict(at.query_params).items()}
    assert url["epochs"] == "3" and url["img_size"] == "64" and url["backbone"] == "cnn8"
    fresh = AppTest.from_file(PAGE, default_timeout=60)
    fresh.query_params.update({**url, "threshold": "spec:0.9"})  # a rule the presets do not list
    fresh.run()
    assert not fresh.exception, [e.value for e in fresh.exception]
    assert (fresh.selectbox(key="backbone").value, fresh.selectbox(key="img_size").value,
            fresh.number_input(key="epochs").value, fresh.text_input(key="data_path").value) == (
        "cnn8", 64, 3, str(tiny_dataset))
    assert fresh.selectbox(key="threshold").value == "spec:0.9"


def test_a_reload_without_a_recipe_in_the_url_restores_this_browsers_last_submission(store, tiny_dataset,
                                                                                    fake_submit):
    sid = "b" * 32
    runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=7, img_size=96), store, browser="older-other")
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["sid"] = sid
    at.run()
    use_folder(at, tiny_dataset)
    at.selectbox(key="backbone").set_value("cnn8").run()
    at.selectbox(key="img_size").set_value(64)
    at.number_input(key="epochs").set_value(3).run()
    at.button(key="start").click().run()
    assert not at.exception and len(fake_submit) == 1
    time.sleep(0.01)
    runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=9, img_size=128), store,
                    browser="someone-else")  # a newer run of another browser: never restored here
    fresh = AppTest.from_file(PAGE, default_timeout=60)
    fresh.query_params["sid"] = sid  # a reload on another page: the address keeps only this browser's id
    fresh.run()
    assert not fresh.exception, [e.value for e in fresh.exception]
    assert (fresh.selectbox(key="backbone").value, fresh.selectbox(key="img_size").value,
            fresh.number_input(key="epochs").value, fresh.text_input(key="data_path").value) == (
        "cnn8", 64, 3, str(tiny_dataset))
    stranger = AppTest.from_file(PAGE, default_timeout=60)
    stranger.query_params["sid"] = "d" * 32
    stranger.run()
    assert stranger.number_input(key="epochs").value == TrainConfig().epochs  # another browser: the defaults


def test_query_values_that_do_not_fit_are_left_out():
    got = recipe.recipe_from_query({"epochs": "3", "img_size": "x", "optimizer": "rmsprop", "lr": "5",
                                          "threshold": "spec:0.9", "nonsense": "1"})
    assert got == {"epochs": 3, "threshold": "spec:0.9"}
    assert recipe.recipe_to_query({"epochs": 10, "img_size": 64, "data": "demo"}) == {"img_size": "64"}


def test_missing_imagenet_weights_are_refused_before_the_click(store, monkeypatch):
    monkeypatch.setattr(backbones, "find_imagenet_weights", lambda name: None)
    at = page()
    init = at.selectbox(key="init")
    assert init.format_func("imagenet").endswith("not on this machine")
    init.set_value("imagenet").run()
    assert at.button(key="start").disabled
    assert backbones.imagenet_weight_file("resnet18") in texts(at.warning)


def test_cancel_counts_finished_epochs_and_failures_that_repeat_are_not_offered_again(store, monkeypatch):
    cancelled = _fake_run(store, "cancelled", epochs_done=1)
    assert trainer_view.status_text(runs.load_run(cancelled)) == "Cancelled after epoch 1/4; the finished epoch is kept"
    monkeypatch.setattr(backbones, "find_imagenet_weights", lambda name: None)
    d = runs.create_run(TrainConfig(data="demo", backbone="resnet18", init="imagenet", epochs=2), store)
    fake_status(d, state="failed", error="ImageNet weights for resnet18 are not on this machine.")
    row = trainer_view.job_row(runs.load_run(d))
    assert row.status_text == "Failed" and row.repeat_problem and "From scratch" not in row.title
    assert "ImageNet weights" in row.title
    at = page()
    assert texts(at.error).count("ImageNet weights for resnet18 are not on this machine") == 1
    assert not [b for b in at.button if b.key == f"again-{d.name}"]
    assert [b for b in at.button if b.key == f"again-{cancelled.name}"]


def test_a_run_at_chance_says_so_on_its_card(store):
    d = _fake_run(store, "completed", epochs_done=2, test_accuracy=0.5)
    fileio.atomic_write_json(d / "test_metrics.json", {"classes": ["NORMAL", "PNEUMONIA"], "auroc": 0.61,
                                                       "confusion": [[0, 8], [0, 8]]})
    assert "predicts PNEUMONIA for every test image: no better than chance" in texts(page().markdown)


def test_fine_tuning_from_a_run_keeps_its_decision_rule_when_classes_match(store):
    d = runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=1, threshold="spec:0.9"), store)
    (d / "model.pt").write_bytes(b"stub")
    fileio.atomic_write_json(d / "test_metrics.json", {"classes": ["NORMAL", "PNEUMONIA"]})
    fake_status(d, state="completed")
    assert trainer_form.source_rule(f"run:{d.name}", ["NORMAL", "PNEUMONIA"], store) == "spec:0.9"
    assert trainer_form.source_rule(f"run:{d.name}", ["COVID", "NORMAL"], store) is None
    at = page()
    at.selectbox(key="backbone").set_value("cnn8").run()
    at.selectbox(key="init").set_value(f"run:{d.name}").run()
    assert at.selectbox(key="threshold").value == "spec:0.9"
    at.selectbox(key="threshold").set_value("argmax").run()  # the user's own pick wins from then on
    at.selectbox(key="init").set_value("scratch").run()
    at.selectbox(key="init").set_value(f"run:{d.name}").run()
    assert at.selectbox(key="threshold").value == "argmax"
