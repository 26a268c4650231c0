"""One image, one answer: every surface reads the one ImageResult, and prediction sets are nested across coverages.

Surfaces: the Diagnosis page (decision sentence, set sentence, faithfulness line, a comparison column), the
downloaded overlay's footer, and `predict --cam` JSON, for the 20 built-in test films and the shipped model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from cxrdemo import paths
from cxrdemo.cli.main import main as cli
from cxrdemo.diagnosis import predict, result
from cxrdemo.model import conformal
from cxrdemo.views import diagnosis as dv

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "diagnosis.py")
FILMS = sorted((paths.PACKAGE_DIR / "demo_data" / "test").glob("*/*"))


@pytest.fixture(scope="module")
def demo():
    return predict.load_model("demo")


@pytest.fixture(scope="module")
def answers(demo):
    return {f.name: result.assess(demo, predict.read_radiograph(str(f), f.name)) for f in FILMS}


def test_the_built_in_test_split_is_the_20_films_the_surfaces_are_read_for():
    assert len(FILMS) == 20 and {f.parent.name for f in FILMS} == {"NORMAL", "PNEUMONIA"}


# ---------------------------------------------------------------- nested sets

def test_the_shipped_models_sets_are_nested_on_every_built_in_film(demo, answers):
    assert set(demo.conformal) == {0.90, 0.95}
    for name, r in answers.items():
        s90, s95 = r.prediction_set(0.90), r.prediction_set(0.95)
        assert s90 is not None and s95 is not None and set(s90) <= set(s95), name
        assert r.predicted in s90


def _records(rng: np.random.Generator, n_val: int) -> tuple[dict, np.ndarray]:
    """Conformal records at 90% and 95% fitted on random validation probabilities of a random 2-class 'run'."""
    labels = rng.integers(0, 2, n_val)
    p1 = np.clip(rng.beta(2, 2, n_val) * 0.6 + 0.4 * labels * rng.random(n_val), 0, 1)
    val = np.stack([1 - p1, p1], 1)
    return {lv: conformal.fit_conformal(val, labels, lv) for lv in (0.90, 0.95)}, val


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n_val=st.integers(40, 400), threshold=st.floats(0.05, 0.95))
def test_sets_of_random_runs_are_nested_whatever_the_repairs(seed, n_val, threshold):
    rng = np.random.default_rng(seed)
    records, _ = _records(rng, n_val)
    p1 = rng.random(500)
    probs = np.stack([1 - p1, p1], 1)
    verdicts = (p1 >= threshold).astype(int)
    outside = rng.random(500) < 0.05
    masks = conformal.nested_set_masks(probs, records, verdicts, outside)
    if masks[0.95] is None:  # a class with under 19 validation images: no 95% set, nothing to nest
        assert not records[0.95].ok and "at least 19" in records[0.95].reason
        return
    assert (masks[0.95] | masks[0.90] == masks[0.95]).all()  # 95% holds 90%, image by image
    assert masks[0.90][np.arange(500), verdicts].all() and masks[0.95][outside].all()
    # each level still holds its own repaired set: coverage can only grow
    assert (masks[0.95] >= conformal.set_masks(probs, records[0.95], verdicts, outside)).all()


def test_without_the_union_the_repairs_would_break_nesting():
    """The failure the union prevents (71 of 574 films before): 'both' at 90% from a gap between the two classes'
    cut-offs, one class at 95% where they overlap."""
    n = 200  # a confident model: the right class gets 70-100% on validation, so the cut-offs leave a gap
    labels = np.arange(n) % 2
    right = np.linspace(0.7, 1.0, n)
    val = np.where(labels[:, None] == 1, np.stack([1 - right, right], 1), np.stack([right, 1 - right], 1))
    records = {lv: conformal.fit_conformal(val, labels, lv) for lv in (0.90, 0.95)}
    p1 = np.linspace(0, 1, 2001)
    probs = np.stack([1 - p1, p1], 1)
    verdicts = (p1 >= 0.5).astype(int)
    own90 = conformal.set_masks(probs, records[0.90], verdicts)
    own95 = conformal.set_masks(probs, records[0.95], verdicts)
    broken = (own90 & ~own95).any(axis=1)
    assert broken.any()  # the per-level sets alone are not nested for this run...
    nested = conformal.nested_set_masks(probs, records, verdicts)
    assert not (nested[0.90] & ~nested[0.95]).any()  # ...the shown ones are


def test_test_metrics_measure_the_nested_sets_shown(demo):
    from cxrdemo.model import trust

    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (300, 2))
    labels = rng.integers(0, 2, 300)
    out = trust.trust_metrics(logits, labels, demo.trust, demo.decision.value, demo.classes, resamples=20)
    c90, c95 = out["coverage"]
    assert (c90["level"], c95["level"]) == (0.90, 0.95)
    assert c95["coverage"] >= c90["coverage"] and c95["mean_size"] >= c90["mean_size"]


# ---------------------------------------------------------------- every surface, one number

@pytest.mark.slow
def test_predict_json_and_the_overlay_footer_say_what_the_result_says(demo, answers, tmp_path, capsys):
    assert cli(["predict", "--run", "demo", "--cam", str(tmp_path / "o.png"), *map(str, FILMS)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 20
    for line in lines:
        r = answers[Path(line["image"]).name]
        assert line["class"] == r.classes[r.predicted]
        assert line["probabilities"] == {c: round(float(p), 6) for c, p in zip(r.classes, r.probs)}
        assert line["prediction_set"] == r.set_names(0.90)
        assert line["prediction_sets"] == {"0.90": r.set_names(0.90), "0.95": r.set_names(0.95)}
        f = line["faithfulness"]
        assert f["class_name"] == line["class"]
        assert f["p_before"] == pytest.approx(line["probabilities"][line["class"]], abs=1e-6)
        assert f"from {dv.percent(r.p)}" in f["reading"] or f"at {dv.percent(r.p)}" in f["reading"]
        assert "probability" not in json.dumps(line["debug"])  # the raw logits are labelled as what they are
        footer = " ".join(dv.overlay_footer("Demo model (shipped)", r, "GradCAM", r.predicted, 0.90))
        assert f"Prediction: {r.classes[r.predicted]} (p = {dv.percent(r.p)}, calibrated)" in footer
        assert f"set at 90%: {dv.set_words(r, 0.90)}" in footer


def _page(monkeypatch, tmp_path) -> AppTest:
    import shutil

    # the shipped model again, as a run of this store: the comparison column must say what the main view says
    shutil.copytree(paths.demo_run_dir(), tmp_path / "runs" / "20261206-000000-cnn5-copy")
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.mark.slow
def test_the_diagnosis_page_shows_the_results_numbers_for_every_film(demo, answers, monkeypatch, tmp_path):
    at = _page(monkeypatch, tmp_path)
    assert at.selectbox(key="model").value == "Demo model (shipped)"
    for i, f in enumerate(FILMS):
        r = answers[f.name]
        at.file_uploader(key="upload").upload(f.name, f.read_bytes(), "image/jpeg").run()
        if at.checkbox and not at.checkbox[0].value:
            at.checkbox[0].check().run()
        if i in (0, 4):  # the comparison column for the first four films
            options = at.multiselect(key="compare").options
            at.multiselect(key="compare").set_value(options if i == 0 else []).run()
        assert not at.exception, at.exception
        said = next(m.value for m in at.markdown if m.value.startswith("Prediction:"))
        assert f"**{r.classes[r.predicted]}**" in said and dv.percent(float(r.probs[1])) in said
        sets = [m.value for m in at.markdown if m.value.startswith("Prediction set at 90%")]
        assert sets and dv.set_words(r, 0.90) in sets[0].replace("\\", "")
        faiths = [c.value for c in at.caption if "Faithfulness (ROAD)" in c.value]
        assert len(faiths) == (3 if i < 4 else 1)  # with the comparison: a column for each model, the main one too
        for faith in faiths:  # the main view's and the column's: the p on the bar, calibrated
            p = re.search(r"p\(\w+\) (?:from|at) (\d+\.\d+)%", faith)
            assert p and p.group(1) + "%" == dv.percent(r.probs[r.predicted]), faith
        if i < 4:  # the comparison column reads the same result: the same sentence and set, word for word
            assert [m.value for m in at.markdown if m.value.startswith("Prediction:")] == [said] * 3
            assert len({m.value for m in at.markdown if m.value.startswith("Prediction set at 90%")}) == 1
        at.file_uploader(key="upload").clear().run()


def test_a_perfect_share_in_the_headline_reads_as_its_count(demo):
    """'Specificity 100% (100–100%)' is no interval a clinician believes: the count and an exact interval are."""
    heads = {h["set"]: dict(dv.headline_cells(h, demo.classes)) for h in predict.model_summary(demo)["headlines"]}
    cells = heads["cxr-dev/test"]
    assert cells["Specificity"] == "all 37 NORMAL films called NORMAL; 95% interval 90.5–100%"
    assert cells["Accuracy"].startswith("95.9% (")


def test_the_results_one_forward_pass_gives_the_networks_own_logits(demo, answers):
    import torch

    for f in FILMS[:6]:
        r = answers[f.name]
        with torch.no_grad():
            ref = demo.net.eval()(demo.preprocessing.normalize(r.image)).float()[0].numpy()
        assert np.array_equal(r.logits, ref)  # bit for bit: the head sees the very pooled features
        assert np.allclose(r.probs, demo.trust.probabilities(ref[None])[0], atol=0, rtol=0)
