"""The fifth lesson, "A model that has never seen an adult": one adult film read by the demo model without and with
its header age, its in-domain distance among the validation films', in words and a histogram; the Lessons tab."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cxrdemo.diagnosis import adult_film, predict
from cxrdemo.model import checkpoint
from cxrdemo.views import adult_lesson as al
from tests.adult_dicom import adult_dicom

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not checkpoint.has_model(ROOT / "weights" / "demo"),
                                reason="the shipped demo model's weights are not in this checkout")


@pytest.fixture(scope="module")
def demo():
    return predict.load_model("demo")


@pytest.fixture(scope="module")
def reading(demo):
    rad = predict.read_radiograph(adult_dicom("055Y"), "adult.dcm")
    return adult_film.read_adult_film(demo, rad)


def test_the_same_pixels_are_read_twice_and_only_the_age_changes_the_answer(demo, reading):
    blind, aged = reading.pixels_only, reading.with_age
    assert blind.population.in_population is None and blind.population.age_years is None
    assert aged.population.in_population is False and aged.population.age_years == 55.0
    assert aged.outside == "population" and aged.set_names(0.9) == list(demo.classes)  # "both"
    assert np.array_equal(blind.probs, aged.probs) and blind.predicted == aged.predicted
    assert blind.domain_score == aged.domain_score and aged.domain_cutoff == demo.domain.cutoff


def test_the_words_name_the_age_the_set_and_the_distance(demo, reading):
    one = al.pixels_only_words(demo, reading)
    assert one.startswith("**1. The picture alone**") and "Prediction: **" in one and "sure of" in one
    two = al.with_age_words(demo, reading)
    assert "55 years old" in two and "children aged 1–5 years" in two and "**both**" in two
    three = al.distance_words(demo, reading)
    assert f"distance {reading.with_age.domain_score:.1f}" in three
    assert "Doe" not in one + two + three and "MRN" not in one + two + three


def test_the_histogram_marks_the_film_and_the_cutoff_among_the_validation_scores(reading):
    if reading.val_scores is None:
        assert al.distance_figure(reading) is None  # an older record keeps no validation scores
        return
    fig = al.distance_figure(reading)
    assert np.array_equal(np.asarray(fig.data[0].x), reading.val_scores)
    marked = sorted(s.x0 for s in fig.layout.shapes)
    assert marked == sorted([reading.with_age.domain_cutoff, reading.with_age.domain_score])
    share = reading.farther_than
    assert share == pytest.approx(np.mean(reading.val_scores < reading.with_age.domain_score))
    words = al.distance_words(predict.load_model("demo"), reading)
    assert "validation films" in words and (("every one of" in words) == (share == 1))


def test_without_a_known_age_the_lesson_asks_for_one(demo):
    rad = predict.read_radiograph(adult_dicom("055Y"), "adult.dcm")
    import dataclasses

    no_age = dataclasses.replace(rad, meta=dataclasses.replace(rad.meta, age_years=None))
    r = adult_film.read_adult_film(demo, no_age)
    assert "type the patient's age" in al.with_age_words(demo, r)
    stated = adult_film.read_adult_film(demo, no_age, stated_age=40.0)
    assert stated.with_age.population.in_population is False and "You said the patient is 40 years old" in \
        al.with_age_words(demo, stated)


def test_the_sample_film_is_pydicom_datas_rg1_or_none(monkeypatch):
    path = adult_film.sample_film()
    if path is not None:
        assert path.name == "RG1_UNCR.dcm" and path.is_file()
    monkeypatch.setitem(sys.modules, "data_store", None)  # as if pydicom-data were not installed
    assert adult_film.sample_film() is None
    assert "pip install pydicom-data" in al.source_words(False) and "RG1" in al.source_words(True)


def _lessons_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app_pages" / "lessons.py"), default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.slow
def test_the_lessons_page_has_the_fifth_tab_with_the_film_or_an_upload():
    at = _lessons_page()
    assert at.tabs[-1].label == al.TITLE
    text = " ".join(m.value for m in at.tabs[-1].markdown)
    assert "Intended use" in text
    if adult_film.sample_film() is not None:
        assert "RG1" in text and "years old" in text and "**1. The picture alone**" in text
    else:
        assert "pip install pydicom-data" in text and len(at.tabs[-1].get("file_uploader")) == 1
