"""Words and pictures behind the demo-day fixes: chance level, heatmap captions, the downloaded overlay."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdemo.views import chance, diagnosis

CLASSES = ["NORMAL", "PNEUMONIA"]


@pytest.mark.parametrize("test, expected", [
    ({"classes": CLASSES, "confusion": [[0, 40], [0, 60]], "auroc": 0.9},
     "predicts PNEUMONIA for every test image: no better than chance"),
    ({"classes": CLASSES, "confusion": [[10, 10], [8, 12]], "auroc": 0.6}, "includes 0.5: no better than chance"),
    ({"classes": CLASSES, "confusion": [[10, 10], [8, 12]], "auroc": 0.6, "auroc_ci": [0.55, 0.7]}, None),
    ({"classes": CLASSES, "confusion": [[300, 30], [20, 400]], "auroc": 0.95}, None),
    (None, None),
])
def test_chance_rule(test, expected):
    got = chance.chance_sentence(test)
    assert (got is None) if expected is None else expected in got


def test_hanley_mcneil_interval_narrows_with_more_images():
    small = chance._auroc_interval({"auroc": 0.7, "confusion": [[10, 0], [0, 10]]})
    large = chance._auroc_interval({"auroc": 0.7, "confusion": [[500, 0], [0, 500]]})
    assert small[0] < 0.5 < small[1] and 0.5 < large[0] < 0.7 < large[1] < 0.75


def test_caption_for_a_class_the_model_did_not_predict():
    probs = np.array([0.9996, 0.0004])
    assert diagnosis.heatmap_caption("GradCAM", CLASSES, probs, 0, 1) == (
        "GradCAM: why it might be PNEUMONIA — the model said NORMAL, p(PNEUMONIA) = 0.0%")
    assert diagnosis.heatmap_caption("GradCAM", CLASSES, probs, 0, 0) == "GradCAM: why the model said NORMAL"


def _result(probs, predicted, sets=None):
    from cxrdemo.data import ImageMeta
    from cxrdemo.diagnosis.result import ImageResult

    sets = sets or {0.9: (predicted,), 0.95: (0, 1)}
    return ImageResult("x.png", "", CLASSES, np.array(probs), np.zeros(2), predicted, 0.5, True, sets, {}, True,
                       None, None, None, None, None, ImageMeta(64, 64, "png", "L", 8))


@pytest.mark.parametrize("width, height", [(224, 224), (256, 256), (400, 300), (1024, 900), (3000, 2400)])
def test_downloaded_overlay_has_a_whole_footer_at_every_size(width, height):
    rgb = np.full((height, width, 3), 128, np.uint8)
    r = _result([0.2, 0.8], 1)
    lines = diagnosis.overlay_footer("Demo model (shipped)", r, "GradCAM", 0, 0.9)
    assert lines[0] == "GradCAM heatmap for NORMAL"
    assert lines[1] == "Prediction: PNEUMONIA (p = 80.0%, calibrated) | set at 90%: {PNEUMONIA}"
    assert "NOT FOR CLINICAL USE" in lines[-1]
    out = diagnosis.with_footer(rgb, lines)
    w = max(width, diagnosis.FOOTER_MIN_WIDTH)
    h = round(height * w / width)
    assert out.shape[1] == w and out.shape[0] > h and (out[:h] == 128).all()  # the image whole, then the footer
    footer = out[h:]
    assert (footer == 255).any() and (footer == 0).mean() > 0.5  # white text on black
    # every word is drawn, none cut at the right edge: the wrapped lines hold the same words and fit the width
    from PIL import ImageFont

    size = max(diagnosis.FOOTER_FONT_PX, round(diagnosis.FOOTER_FONT_PX * w / diagnosis.FOOTER_MIN_WIDTH))
    font = ImageFont.load_default(size=size)
    wrapped = [part for line in lines for part in diagnosis._wrap(line, font, w - size)]
    assert " ".join(wrapped).split() == " ".join(lines).split()
    assert all(font.getlength(part) <= w - size for part in wrapped)
    assert (footer[:, -max(2, size // 4):] == 0).all()  # nothing reaches the right edge
    name = diagnosis.overlay_filename("Demo model (shipped)", "GradCAM", CLASSES, 1, 0)
    assert name == "cxrdemo-Demo-model-shipped-GradCAM-NORMAL-heatmap-predicted-PNEUMONIA-NOT-FOR-CLINICAL-USE.png"


def test_the_decision_line_writes_the_threshold_on_the_scale_the_bar_shows():
    from cxrdemo.diagnosis import predict
    from cxrdemo.views import diagnosis as dv

    model = predict.load_model("demo")  # calibrated: T = 1.75 moves the 8.8% cut to about 20.8%
    line, details = dv.decision_line(model)
    assert model.trust.calibrated and dv.percent(model.threshold) in line and dv.percent(model.threshold) in details
    assert dv.percent(model.decision.value) not in line and "calibrated on validation" in details


# ---------------------------------------------------------------- issue 18, one test per bullet a browser need not see

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def symbol_glyphs(text: str) -> list[str]:
    """Characters that need an emoji or symbol font: Unicode 'other symbols', anything past the BMP, and the
    emoji variation selector (arrows, ±, ×, ≥ and dashes are in every text font and pass)."""
    import unicodedata

    return [ch for ch in text if unicodedata.category(ch) == "So" or ord(ch) > 0xFFFF or ch == "\ufe0f"]


def test_what_pages_show_needs_no_emoji_font():
    """A warning icon showed as an empty box: icons are Streamlit's material icons (:material/...:), never glyphs."""
    assert symbol_glyphs("⚠️ careful ✅ 📊 ✓ ▶") == ["⚠", "\ufe0f", "✅", "📊", "✓", "▶"]  # the check can fail
    assert symbol_glyphs("8.8% · p ≥ 0.5 — 3 × 4 → ±0.02 … ρ") == []
    sources = [ROOT / "app.py", *(ROOT / "app_pages").glob("*.py"), *(ROOT / "cxrdemo" / "views").glob("*.py"),
               *(ROOT / "cxrdemo" / "diagnosis").glob("*.py")]
    found = {p.name: symbol_glyphs(p.read_text(encoding="utf-8")) for p in sources}
    assert len(sources) > 20 and not {k: v for k, v in found.items() if v}


def test_the_faithfulness_mark_is_a_material_icon():
    from types import SimpleNamespace

    from cxrdemo.views import heatmaps

    def f(beats: bool):
        return SimpleNamespace(beats_chance=beats, score=0.2 if beats else 0.0, seconds=1.0, percentiles=(80,),
                               class_name="X", p_before=0.9, without_most=(0.5,), without_least=(0.9,),
                               random_mean=0.01, random_sd=0.01)

    good, bad = heatmaps.faithfulness_line(f(True)), heatmaps.faithfulness_line(f(False))
    assert good.startswith(":material/check_circle: ") and bad.startswith(":material/warning: ")


def test_the_job_card_chart_shows_loss_and_accuracy_for_train_and_validation(store):
    from cxrdemo.config import TrainConfig
    from cxrdemo.runs import store as runs
    from cxrdemo.views import card

    d = runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=3), store)
    for e, (tl, vl, ta, va) in enumerate([(0.9, 0.8, 0.6, 0.62), (0.6, 0.7, 0.75, 0.7), (0.4, 0.65, 0.85, 0.74)], 1):
        runs.append_metrics(d, {"epoch": e, "train_loss": tl, "val_loss": vl, "train_acc": ta, "val_acc": va})
    fig = card.card_figure(d)
    traces = {(t.xaxis, t.name): list(t.y) for t in fig.data}
    assert traces == {("x", "train"): [0.9, 0.6, 0.4], ("x", "validation"): [0.8, 0.7, 0.65],
                      ("x2", "train"): [0.6, 0.75, 0.85], ("x2", "validation"): [0.62, 0.7, 0.74]}
    assert fig.layout.height >= 200 and fig.layout.legend.y < 0  # readable (was ~25 px, loss only), legend below


def test_option_words_match_their_labels():
    from cxrdemo.views import trainer_form

    specs = {spec.name: spec for spec in trainer_form.widget_specs()}
    assert specs["optimizer"].word("sgd") == "SGD" and specs["optimizer"].word("adam") == "Adam"
    from cxrdemo.views import words

    labels = trainer_form.init_options("resnet18", [])
    for init in ("scratch", "imagenet"):  # a job's title says what the form's choice said ("From scratch")
        assert labels[init].startswith(words.init_words(init))


def test_a_slow_heatmap_says_how_long_it_will_take_and_fast_ones_stay_instant(patch_model):
    from cxrdemo.diagnosis import cam_cost

    assert cam_cost.expected_seconds(patch_model, "GradCAM") is None
    seconds = cam_cost.expected_seconds(patch_model, "ScoreCAM")
    assert seconds is not None and seconds > 0
    assert diagnosis.wait_text("ScoreCAM", 31.6) == "Computing the ScoreCAM heatmap: about 32 s on this machine…"
    assert diagnosis.wait_text("GradCAM", None) == "Computing the prediction and the heatmap…"


def test_the_model_caption_names_no_run_the_user_does_not_have(store):
    from cxrdemo.config import TrainConfig
    from cxrdemo.runs import store as runs

    mine = runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=1), store)
    assert diagnosis.start_words(f"run:{mine.name}", store) == f"fine-tuned from run {mine.name}"
    assert diagnosis.start_words("run:20250101-000000-resnet18-x", store) == "fine-tuned from an earlier model"
    assert diagnosis.start_words("run:demo", store) == "fine-tuned from the shipped demo model"
    assert diagnosis.start_words("scratch", store) == "trained from scratch"


@pytest.mark.slow
def test_compare_table_is_compact_by_default_with_the_test_metrics(compare_store, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from cxrdemo.views import compare

    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(compare_store["root"]))
    at = AppTest.from_file(str(ROOT / "app_pages" / "compare.py"), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    order = list(at.dataframe[0].proto.column_order)
    assert order == list(compare.COMPACT_COLUMNS)
    assert {"test_accuracy", "test_auroc", "test_sensitivity", "test_specificity"} <= set(order)
    # fixed widths that add up to what a 1400 px projector shows beside the sidebar (the browser test measures it)
    assert sum(compare.COMPACT_WIDTHS.values()) <= compare.PROJECTOR_TABLE_PX
    df = at.dataframe[0].value
    readable = df[df["status"] != "damaged"]  # a damaged run keeps its folder name: that is all it has
    assert df["name"].is_unique and len(readable) >= 4 and not readable["name"].str.match(r"^\d{8}-").any()
    assert any("Sens." in c.value for c in at.caption)  # the short headers are explained
    at.toggle(key="all_columns").set_value(True).run()
    assert list(at.dataframe[0].proto.column_order) == []  # every column


def test_the_readme_shows_exactly_the_screenshots_the_browser_test_takes():
    """The README's pictures are retaken by `CXRDEMO_SCREENSHOTS=docs/screenshots pytest tests/test_browser.py`."""
    import re

    browser_test = (ROOT / "tests" / "test_browser.py").read_text(encoding="utf-8")
    taken = set(re.findall(r'_shots\(tmp\) / "([\w-]+\.png)"', browser_test))
    # not README pictures: the gallery close-up of a 1-epoch run, and the tiny (32 px) end-to-end lesson run
    skipped = {"compare_gallery.png", "lesson.png"}
    shown = set(re.findall(r"\]\(docs/screenshots/([\w-]+\.png)\)", (ROOT / "README.md").read_text(encoding="utf-8")))
    assert {"home.png", "trainer.png", "compare.png", "diagnosis.png", "lessons.png"} <= shown
    assert shown == taken - skipped


def test_a_run_at_chance_says_so_on_compare(store):
    from cxrdemo import fileio
    from cxrdemo.config import TrainConfig
    from cxrdemo.runs import store as runs
    from cxrdemo.views import compare
    from tests.helpers import fake_status

    d = runs.create_run(TrainConfig(data="demo", backbone="cnn8", epochs=1), store)
    fake_status(d, state="completed", epoch=1)
    fileio.atomic_write_json(d / "test_metrics.json", {"classes": CLASSES, "accuracy": 0.5, "auroc": 0.61,
                                                       "confusion": [[0, 8], [0, 8]]})
    row = compare.run_row(runs.load_run(d))
    assert row["problem"] == "The model predicts PNEUMONIA for every test image: no better than chance."


def test_compare_legends_sit_below_the_plots(compare_store):
    from cxrdemo.runs import store as runs
    from cxrdemo.views import plots

    infos = [i for i in runs.list_runs(compare_store["root"]) if not i.damaged]
    for metric in ("loss", "accuracy"):
        fig = plots.curves_figure(infos, metric)
        legend = fig.layout.legend  # below the plot: it keeps the full width (issue 31: in the bottom margin, under
        assert legend.orientation == "h" and legend.yref == "container" and legend.y == 0  # the axis title)


def test_the_readme_says_where_the_full_datasets_come_from():
    """Someone outside this project: the data's DOI (the one the demo data cites), the COVID-19 Radiography
    Database, and the retrain command with a downloaded folder rather than this project's ../shared."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    dois = set(re.findall(r"doi:(10\.\d+/[\w.]+\w)", (ROOT / "cxrdemo" / "demo_data" / "README.md").read_text()))
    assert "10.17632/rscbjbr9sj.2" in dois and all(d in readme for d in dois)
    assert "COVID-19 Radiography Database" in readme and "chest_xray/train/NORMAL" in readme  # how folders map
    commands = [line for line in readme.splitlines() if "cxrdemo demo-model" in line]
    assert commands and not any("shared/data" in c for c in commands)


# ---------------------------------------------------------------- short names and labels that fit their boxes

@pytest.mark.parametrize("run_id, example, expected", [
    ("20261128-101028-cnn5-1-freeze-cnn5-1", False, "freeze-cnn5-1 · 28 Nov 10:10"),
    ("20261128-101028-cnn5-1-freeze-cnn5-1", True, "freeze-cnn5-1 (example)"),
    ("20261128-115103-cnn8-none", False, "cnn8 · freeze none · 28 Nov 11:51"),
    ("20261128-115103-resnet18-gradual-2", False, "resnet18 · freeze gradual:2 · 28 Nov 11:51"),
    ("20261128-115103-resnet18-gradual-2-2", False, "resnet18 · freeze gradual:2 #2 · 28 Nov 11:51"),
    ("20260105-090000-mobilenet_v3_small-head-my-run", False, "my-run · 5 Jan 09:00"),
    ("demo", False, "shipped demo model"),
    ("someone-elses-id", False, "someone-elses-id"),
])
def test_run_names_are_short_and_say_what_the_run_is(run_id, example, expected):
    from cxrdemo.views import words

    assert words.run_name(run_id, example) == expected


def test_run_names_stay_unique_when_two_runs_read_the_same():
    from cxrdemo.views import words

    ids = ["20261128-115103-cnn8-none", "20261128-115159-cnn8-none", "20261128-120000-cnn8-none"]
    names = words.run_names(ids)
    assert names == ["cnn8 · freeze none · 28 Nov 11:51:03", "cnn8 · freeze none · 28 Nov 11:51:59",
                     "cnn8 · freeze none · 28 Nov 12:00"]


def test_every_trainer_choice_fits_its_box(tmp_path):
    """Streamlit cuts a choice longer than its box with '…' ('automatic (fastest this mach…'): every label of every
    select, for every backbone, stays within the characters its row's box holds at 1400 px."""
    from cxrdemo.config import TrainConfig
    from cxrdemo.model import backbones
    from cxrdemo.runs import store as runs
    from cxrdemo.views import trainer_form as form
    from cxrdemo.views import words
    from tests.helpers import fake_status

    budget = {group: form.LABEL_CHARS[n] for group, n in form.ROW_WIDGETS.items()}
    too_long = [(s.name, s.word(o)) for s in form.widget_specs() if s.kind == "select"
                for o in s.options if len(s.word(o)) > budget[s.group]]
    rules = ["argmax", "val", "spec:0.975", "sens:0.95"]
    too_long += [("threshold", words.rule_label(r)) for r in rules if len(words.rule_label(r)) > budget["more"]]
    done = runs.create_run(TrainConfig(data="demo", backbone="cnn5", freeze="1"), tmp_path, name="freeze-cnn5-1")
    fake_status(done, state="completed", epochs=1, epoch=1)
    (done / "model.pt").write_bytes(b"x")
    infos = runs.list_runs(tmp_path)
    for b in backbones.backbone_names():
        labels = [form.backbone_label(b), *form.freeze_options(b).values(),
                  *form.init_options(b, infos).values()]
        too_long += [(b, label) for label in labels if len(label) > budget["network"]]
    assert not too_long, too_long
    assert any(label.startswith("Run freeze-cnn5-1 · ") for label in form.init_options("cnn5", infos).values())
