"""The Diagnosis page through AppTest: notice, model choice, examples, uploads, warnings before predictions."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cxrdemo import paths
from tests.test_predict import SECRETS, _checkerboard, _dicom, bad_uploads

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "diagnosis.py")
TIMEOUT = 60


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def _texts(at: AppTest) -> str:
    """Every string the page shows: markdown, captions, alerts, metrics, widget labels and options."""
    parts = [e.value for e in (*at.markdown, *at.caption, *at.warning, *at.error, *at.info, *at.success)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    parts += [str(w.label) + " " + " ".join(map(str, getattr(w, "options", []))) for w in (*at.selectbox, *at.radio)]
    return "\n".join(map(str, parts))


def _predictions(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("Prediction:")]


def test_without_any_model_the_page_points_to_the_trainer(store):
    at = _page()
    assert "not for clinical use" in at.warning[0].value
    assert any("Trainer" in i.value for i in at.info)
    assert not at.file_uploader and not _predictions(at)


def test_an_example_gives_a_prediction_probabilities_and_overlay(patch_store):
    at = _page()
    assert "not for clinical use" in at.warning[0].value
    assert at.selectbox(key="model").value.startswith(patch_store.run.name)  # no demo model: the completed run
    assert any("cnn8" in c.value and "Says" in c.value for c in at.caption)  # the recipe and the decision, one line
    # the headline numbers are lines of text, readable in a narrow column (no truncated metric tiles)
    headline = next(m.value for m in at.markdown if "Accuracy " in m.value)
    assert headline.startswith("**In-distribution") and not at.metric
    assert not _predictions(at)  # nothing chosen yet
    radio = at.radio(key="example")
    assert radio.options == ["NORMAL example 1", "NORMAL example 2", "PNEUMONIA example 1", "PNEUMONIA example 2"]
    radio.set_value("PNEUMONIA example 1").run()
    assert not at.exception, at.exception
    assert not any("does not look like a chest" in w.value for w in at.warning)  # a real radiograph
    (pred,) = _predictions(at)
    assert pred.split("**")[1] in ("blank", "patch")
    charts = at.get("plotly_chart")
    assert len(charts) == 1 and '"y":["blank","patch"]' in charts[0].proto.spec.replace(" ", "")
    captions = [c for im in at.image for c in im.captions]
    assert captions == ["The image as read", "GradCAM: why the model said " + pred.split("**")[1]]  # side by side
    assert at.get("download_button")


def test_a_non_radiograph_is_warned_about_before_any_prediction(patch_store):
    at = _page()
    at.file_uploader(key="upload").upload("pattern.png", _png(_checkerboard()), "image/png").run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning if "does not look like a chest" in w.value]
    assert len(warnings) == 1 and not _predictions(at)
    at.checkbox[0].check().run()
    assert not at.exception, at.exception
    assert len(_predictions(at)) == 1
    assert any("does not look like a chest" in w.value for w in at.warning)  # kept visible with the result
    # another odd image needs its own acknowledgement
    at.file_uploader(key="upload").clear().upload("inverted.png", _png(255 - _checkerboard()),
                                                  "image/png").run()
    assert not at.exception and not _predictions(at) and not at.checkbox[0].value


@pytest.mark.parametrize("case", range(5), ids=["empty", "truncated PNG", "text as .png", "PDF", "huge PNG"])
def test_bad_uploads_show_a_sentence_and_the_page_keeps_working(patch_store, make_patch_image, case):
    name, raw, words = bad_uploads(make_patch_image)[case]
    at = _page()
    at.file_uploader(key="upload").upload(name, raw, "application/octet-stream").run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and words in errors[0] and not _predictions(at)
    # the page still works: choose another method, then a good upload
    at.selectbox(key="method").set_value("GradCAM++").run()
    assert not at.exception
    at.file_uploader(key="upload").clear().run()
    at.file_uploader(key="upload").upload("ok.png", _png(make_patch_image(np.random.default_rng(0), True)[0]),
                                          "image/png").run()
    assert not at.exception and not at.error
    if at.checkbox:
        at.checkbox[0].check().run()
    assert len(_predictions(at)) == 1


def test_dicom_upload_predicts_and_never_shows_identifiers(patch_store, make_patch_image):
    at = _page()
    img, _ = make_patch_image(np.random.default_rng(21), True)
    at.file_uploader(key="upload").upload("Doe_Jane.dcm", _dicom(img, "MONOCHROME1", 12), "application/dicom").run()
    if at.checkbox:
        at.checkbox[0].check().run()
    assert not at.exception, at.exception
    assert _predictions(at) == [_predictions(at)[0]] and "**patch**" in _predictions(at)[0]
    assert any("DICOM" in c.value and "MONOCHROME1" in c.value for c in at.caption)
    shown = _texts(at) + " ".join(str(b.proto) for b in at.get("download_button"))
    for secret in SECRETS:
        assert secret not in shown
    assert not list(patch_store.root.parent.glob("**/*.dcm"))  # the upload was never written to disk


def test_class_to_explain_and_model_comparison(patch_store):
    other = patch_store.add("second")
    at = _page()
    at.radio(key="example").set_value("NORMAL example 1").run()
    at.selectbox(key="target").set_value("blank").run()
    assert not at.exception, at.exception
    caption = [c for im in at.image for c in im.captions][1]
    said = _predictions(at)[0].split("**")[1]
    if said == "blank":
        assert caption == "GradCAM: why the model said blank"
    else:  # a class the model did not predict: the caption says so, with that class's probability
        assert caption.startswith("GradCAM: why it might be blank — the model said patch, p(blank) = ")
        assert caption.endswith("%")
    assert at.selectbox(key="model").value.startswith(other.name)  # the newest completed run comes first
    options = at.multiselect(key="compare").options
    assert len(options) == 1 and options[0].startswith(patch_store.run.name)
    at.multiselect(key="compare").set_value(options).run()
    assert not at.exception, at.exception
    assert len(_predictions(at)) == 3  # the main result, then one per model in the comparison row
    assert len(at.image) == 4
    # each column's numbers: the run's own test split, said to be in-distribution, with the four headline metrics
    heads = [m.value for m in at.markdown if m.value.startswith("**In-distribution: its test split, 20 images**")]
    assert len(heads) == 3  # the single view's line, then one per column
    assert " · AUROC" in heads[0] and all(h.count("  \n") == 4 and "AUROC" in h for h in heads[1:])
    assert any(c.value.startswith("Each column gives that model's results") for c in at.caption)


def _demo_and_run(patch_store, tmp_path, chance_run: bool = False):
    """The patch run installed as the demo model, with a card listing a shifted and an in-distribution set."""
    import json
    import shutil

    demo = tmp_path / "weights" / paths.DEMO_RUN_NAME
    shutil.copytree(patch_store.run, demo)
    (demo / "evaluation.json").write_text(json.dumps({"evaluations": [
        {"data": "x/cxr-dev", "split": "test", "label": "in-distribution", "n": 74,
         "metrics": {"accuracy": 0.959, "sensitivity": 0.94, "specificity": 1.0, "auroc": 0.99},
         "ci95": {"accuracy": [0.905, 1.0]}},
        {"data": "x/cxr-shift", "split": "test", "label": "shifted", "n": 241,
         "metrics": {"accuracy": 0.88, "sensitivity": 0.9, "specificity": 0.845, "auroc": 0.95},
         "ci95": {"specificity": [0.765, 0.917]}}]}))
    if chance_run:  # the user's run said PNEUMONIA... here 'patch' for every test image
        tm = json.loads((patch_store.run / "test_metrics.json").read_text())
        tm.update(confusion=[[0, 10], [0, 10]])
        (patch_store.run / "test_metrics.json").write_text(json.dumps(tm))
    return demo


def test_compared_models_show_the_shifted_set_first_with_intervals_and_chance(patch_store, tmp_path):
    """Compare models on this image: the same headline numbers as the single view, the shifted set first."""
    _demo_and_run(patch_store, tmp_path, chance_run=True)
    at = _page()
    assert at.selectbox(key="model").value == "Demo model (shipped)"
    # the single view leads with the shifted set too (the same function draws both)
    single = [m.value.replace("\\", "") for m in at.markdown if m.value.startswith(("**Shifted", "**In-dist"))]
    assert single[0] == ("**Shifted set: cxr-shift/test, 241 images**  \nAccuracy 88.0% · Sensitivity 90.0% · "
                         "Specificity 84.5% (76.5–91.7%) · AUROC 0.950")
    assert single[1].startswith("**In-distribution: cxr-dev/test") and "Accuracy 95.9% (90.5–100%)" in single[1]
    at.radio(key="example").set_value("NORMAL example 1").run()
    (run_label,) = at.multiselect(key="compare").options
    at.multiselect(key="compare").set_value([run_label]).run()
    assert not at.exception, at.exception
    heads = [m.value.replace("\\", "") for m in at.markdown
             if m.value.startswith(("**Shifted set", "**In-distribution"))]
    heads = heads[2:]  # the single view's two lines first, then the columns
    assert heads[0].startswith("**Shifted set: cxr-shift/test, 241 images**")  # the demo model: shifted first
    assert "Specificity 84.5% (76.5–91.7%)" in heads[0] and "Accuracy 88.0%  \n" in heads[0]
    assert heads[1].startswith("**In-distribution: cxr-dev/test, 74 images**")
    assert "Accuracy 95.9% (90.5–100%)" in heads[1]
    assert heads[2].startswith("**In-distribution: its test split, 20 images**")  # the user's run
    chance = [w.value.replace("\\", "") for w in at.warning]
    chance = [w for w in chance if "for every test image: no better than chance" in w]
    assert chance == ["This model predicts patch for every test image: no better than chance."]
    assert len(_predictions(at)) == 3 and len(at.image) == 4  # the main result, then each column


def test_a_run_with_saved_test_probabilities_shows_95_percent_intervals(patch_store):
    import json

    from cxrdemo.diagnosis import predict
    from cxrdemo.model import metrics

    tm = json.loads((patch_store.run / "test_metrics.json").read_text())
    y = [i % 2 for i in range(20)]
    probs = [[0.8, 0.2] if (i % 2 == 0) != (i in (3, 8)) else [0.3, 0.7] for i in range(20)]
    tm.update(metrics.classification_metrics(np.array(y), np.array(probs), tm["classes"], 0.5))
    tm.update(y_true=y, probs=probs, threshold=0.5)  # what training saves beside the metrics
    assert tm["accuracy"] == 0.9
    (patch_store.run / "test_metrics.json").write_text(json.dumps(tm))
    (own,) = predict.headlines(patch_store.run, tm)
    lo, hi = own["ci95"]["accuracy"]
    assert lo < 0.9 < hi <= 1.0 and set(own["ci95"]) == {"accuracy", "sensitivity", "specificity", "auroc"}
    at = _page()
    from cxrdemo.views import numbers

    expected = "Accuracy " + numbers.with_interval("accuracy", 0.9, (lo, hi))
    assert expected == "Accuracy 90.0% (75.0–100%)"
    line = next(m for m in at.markdown if expected in m.value)
    assert "95% intervals in brackets" in line.help


def test_with_only_the_demo_model_the_comparison_picker_says_train_a_model_first(patch_store, tmp_path):
    import shutil

    _demo_and_run(patch_store, tmp_path)
    shutil.rmtree(patch_store.run)
    at = _page()
    at.radio(key="example").set_value("NORMAL example 1").run()
    picker = at.multiselect(key="compare")
    assert picker.disabled and picker.options == [] and "Train a model first" in picker.proto.placeholder


def test_the_image_stays_after_a_page_switch(patch_store):
    at = AppTest.from_file(str(Path(PAGE).parents[1] / "app.py"), default_timeout=TIMEOUT)
    at.switch_page("app_pages/diagnosis.py").run()
    at.radio(key="example").set_value("PNEUMONIA example 1").run()
    first = _predictions(at)
    at.switch_page("app_pages/compare.py").run()
    at.switch_page("app_pages/diagnosis.py").run()
    assert not at.exception, at.exception
    assert _predictions(at) == first and at.radio(key="example").value is None
    assert any("chosen before" in c.value for c in at.caption)
    name, kept = at.session_state["diagnosis:image"]
    assert max(kept.grey.shape) <= 2048 and name.lower().endswith((".png", ".jpeg", ".jpg"))


def test_the_demo_model_is_preselected_when_present(patch_store, tmp_path, monkeypatch):
    import shutil

    demo = tmp_path / "weights" / paths.DEMO_RUN_NAME
    shutil.copytree(patch_store.run, demo)
    at = _page()
    assert at.selectbox(key="model").value == "Demo model (shipped)"
    at.radio(key="example").set_value("NORMAL example 2").run()
    assert not at.exception and len(_predictions(at)) == 1


def test_a_run_named_in_the_link_is_preselected(patch_store):
    """The Trainer's 'Diagnose an image' link carries ?run=<id>: that run, not the newest, is chosen."""
    first = patch_store.run.name
    patch_store.add("newer")
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.query_params["run"] = first
    at.run()
    assert not at.exception
    assert at.selectbox(key="model").value.startswith(first)
    at2 = _page()
    assert not at2.selectbox(key="model").value.startswith(first)  # without the link: the newest run


@pytest.mark.slow
def test_an_image_unlike_the_training_images_is_held_back_and_sets_are_shown(patch_store, tmp_path):
    """A calibrated patch model: a real radiograph is unlike its training images (synthetic patches)."""
    from cxrdemo.runs.records import add_trust_records
    from tests.helpers import make_patch_dataset

    make_patch_dataset(tmp_path / "d", {"train": 20, "val": 20}, seed=3)
    add_trust_records(patch_store.run.name, patch_store.root, str(tmp_path / "d"))
    at = _page()
    at.radio(key="example").set_value("NORMAL example 1").run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning if "unlike the 40 images this model learned from" in w.value]
    assert len(warnings) == 1 and not _predictions(at)  # held back until "run anyway"
    at.checkbox[0].check().run()
    assert not at.exception, at.exception
    assert len(_predictions(at)) == 1 and "probabilities calibrated" in _predictions(at)[0]
    sets = [m.value for m in at.markdown if m.value.startswith("Prediction set at 90% coverage")]
    assert len(sets) == 1 and "**both**" in sets[0] and "unlike the training images" in sets[0]  # outside the promise
    at.radio(key="coverage").set_value("95%").run()
    assert not at.exception, at.exception
    assert [m.value for m in at.markdown if m.value.startswith("Prediction set at 95% coverage")]
