"""Whom a model learnt from (issue 28): the record, where a run gets it, the header's age, the check, the words."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrdemo.cli import options
from cxrdemo.cli.main import build_parser
from cxrdemo.config import TrainConfig
from cxrdemo.data import read_image, scan_dataset
from cxrdemo.data.patient import age_from_dates, parse_age_string
from cxrdemo.diagnosis.population import PopulationCheck, check_population
from cxrdemo.errors import ConfigError, DatasetError, RunError
from cxrdemo.model import checkpoint
from cxrdemo.population import KERMANY_CHILDREN, Population, file_text, parse_age, parse_age_range
from cxrdemo.runs import store as runs
from cxrdemo.runs.worker import execute_run
from cxrdemo.views import recipe
from cxrdemo.views import trainer_form
from cxrdemo.views.model_card import model_card
from cxrdemo.views.population import age_words, population_line, population_reason
from tests.test_imageio import make_dicom
from tests.helpers import make_split_dataset, tiny_config

REPO = Path(__file__).resolve().parents[1]
ADULTS = Population((18, 90), "St Elsewhere", "frontal (PA)")
KERMANY_LINE = ("Learnt from frontal (PA/AP) chest films of children aged 1–5 years (Guangzhou Women and Children's "
                "Medical Center, Kermany et al. 2018).")


# ---------------------------------------------------------------- the DICOM header's age

@pytest.mark.parametrize("text, years", [("055Y", 55), ("006M", 0.5), ("012W", 12 * 7 / 365.25),
                                         ("003D", 3 / 365.25), ("55Y", 55), ("055", 55), ("055y", 55),
                                         (" 040Y ", 40), ("000Y", 0)])
def test_dicom_age_strings_become_years(text, years):
    assert parse_age_string(text) == pytest.approx(years)


@pytest.mark.parametrize("text", ["", "Y", "55 years", "-05Y", "05.5Y", "1234Y", "055X", "abc"])
def test_what_is_not_a_dicom_age_gives_none(text):
    assert parse_age_string(text) is None


def test_age_from_birth_and_study_dates():
    assert age_from_dates("19700101", "20240229") == pytest.approx(54.16, abs=0.005)
    assert age_from_dates("2020.03.01", "2023.03.01") == pytest.approx(3.0, abs=0.005)  # ACR-NEMA's old form
    assert age_from_dates("20200301", "20200229") < 0  # the caller refuses it
    assert age_from_dates("19700231", "20240229") is None and age_from_dates("", "20240229") is None


def _dicom(**elements) -> bytes:
    """A tiny DX DICOM with the given patient and study elements (names and IDs present, to show none leaks; no
    dates unless given, so an age comes only from what a case states)."""
    pixels = np.linspace(0, 255, 256).astype(np.uint8).reshape(16, 16)
    return make_dicom(pixels, bits=8, **{"PatientBirthDate": "", "StudyDate": "", **elements})


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")  # pydicom, writing the header's unreadable age
@pytest.mark.parametrize("elements, age, sex, note", [
    ({"PatientAge": "055Y", "PatientSex": "F"}, 55.0, "F", None),
    ({"PatientAge": "006M", "PatientBirthDate": "19400101", "StudyDate": "20240101"}, 0.5, "", None),  # age first
    ({"PatientBirthDate": "19400615", "StudyDate": "20240101", "PatientSex": "M"}, 83.55, "M", None),
    ({"PatientBirthDate": "19400615", "AcquisitionDate": "20240101"}, 83.55, "", None),
    ({"PatientBirthDate": "19400615", "SeriesDate": "20240101", "PatientSex": "O"}, 83.55, "", None),
    ({"PatientAge": "old", "PatientBirthDate": "20200101", "StudyDate": "20230101"}, 3.0, "", "not a DICOM age"),
    ({"PatientBirthDate": "20240301", "StudyDate": "20240101"}, None, "", "birth date is after its study date"),
    ({"PatientAge": "150Y"}, None, "", "age of 150 years, over 130"),
    ({"PatientBirthDate": "18500101", "StudyDate": "20240101"}, None, "", "age of 174 years, over 130"),
    ({"PatientBirthDate": "19400615"}, None, "", None),  # no study date: no age, nothing to say
    ({}, None, "", None),
])
def test_the_dicom_reader_gives_age_and_sex_and_never_a_date(elements, age, sex, note):
    _, meta = read_image(_dicom(**elements), "x.dcm")
    assert meta.age_years == (None if age is None else pytest.approx(age, abs=0.01)) and meta.sex == sex
    notes = " ".join(meta.notes)
    assert (note in notes) if note else not any("age" in n or "birth" in n for n in meta.notes)
    for value in elements.values():  # no date nor identifier anywhere in what was read
        if value.isdigit() and len(value) == 8:
            assert value not in repr(meta) and value[:4] not in notes
    assert "Doe" not in repr(meta) and "MRN" not in repr(meta)


def test_png_has_no_age():
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, "PNG")
    _, meta = read_image(buf.getvalue(), "x.png")
    assert meta.age_years is None and meta.sex == ""


# ---------------------------------------------------------------- the check and its words

@pytest.mark.parametrize("header, stated, inside, age, source", [
    (55, None, False, 55, "header"), (3, None, True, 3, "header"), (55, 3, False, 55, "header"),  # header first
    (None, 40, False, 40, "stated"), (None, 2.5, True, 2.5, "stated"), (None, None, None, None, None),
    (5.9, None, True, 5.9, "header"), (6.0, None, False, 6.0, "header"), (0.99, None, False, 0.99, "header"),
    (1.0, None, True, 1.0, "header"),
])
def test_the_check_has_three_outcomes(header, stated, inside, age, source):
    check = check_population(KERMANY_CHILDREN, header, stated)
    assert check == PopulationCheck(inside, age, source, 1.0, 5.0)


def test_no_population_stated_means_unknown_whatever_the_age():
    assert check_population(None, 55.0) == PopulationCheck(None, 55.0, "header", None, None)
    assert check_population(Population(None, "my hospital"), None, 40.0).in_population is None


def test_the_reason_says_the_age_and_whom_the_model_learnt_from():
    assert population_reason(check_population(KERMANY_CHILDREN, 55.0)) == (
        "The DICOM header says the patient is 55 years old; this model learnt from children aged 1–5 years only.")
    assert population_reason(check_population(KERMANY_CHILDREN, None, 40.0)).startswith(
        "You said the patient is 40 years old; this model learnt from children aged 1–5")
    assert "3 years old, within the ages" in population_reason(check_population(KERMANY_CHILDREN, 3.4))
    assert "age is not known" in population_reason(check_population(KERMANY_CHILDREN, None))
    assert population_reason(check_population(None, 55.0)) == (
        "The DICOM header says the patient is 55 years old; this model does not state the ages it learnt from, so "
        "the age cannot be checked.")


@pytest.mark.parametrize("years, words", [(55.9, "55 years old"), (1.0, "1 year old"), (0.5, "6 months old"),
                                          (12 * 7 / 365.25, "2 months old"), (3 * 7 / 365.25, "3 weeks old"),
                                          (3 / 365.25, "3 days old"), (1 / 365.25, "1 day old")])
def test_ages_are_worded_in_completed_units(years, words):
    assert age_words(years) == words


def test_the_population_line():
    assert population_line(KERMANY_CHILDREN) == KERMANY_LINE
    assert population_line(ADULTS) == ("Learnt from frontal (PA) chest films of adults aged 18–90 years "
                                       "(St Elsewhere).")
    assert population_line(Population((0, 90))) == "Learnt from chest films of patients aged 0–90 years."
    assert population_line(Population(None, "my ward")).endswith("(my ward); the patients' ages are not stated.")
    assert "not stated" in population_line(None)


@pytest.mark.parametrize("value, years", [("40", 40.0), (" 0.5 ", 0.5), (0, 0.0), (130, 130.0)])
def test_a_stated_age_is_validated_at_the_boundary(value, years):
    assert parse_age(value) == years


@pytest.mark.parametrize("value", ["forty", "", "-1", "131", "nan", "inf", True, None])
def test_a_stated_age_outside_0_to_130_is_a_sentence(value):
    with pytest.raises(ConfigError, match="number of years from 0 to 130"):
        parse_age(value)


# ---------------------------------------------------------------- the record

@pytest.mark.parametrize("text, ages", [("1-5", (1.0, 5.0)), ("1–5", (1.0, 5.0)), (" 18 to 90 ", (18.0, 90.0)),
                                        ("0.5-5", (0.5, 5.0)), ("40-40", (40.0, 40.0)), ("", None)])
def test_age_ranges_parse(text, ages):
    assert parse_age_range(text) == ages


@pytest.mark.parametrize("text, words", [("5-1", "youngest first"), ("1-200", "from 0 to 130"),
                                         ("adults", "YOUNGEST-OLDEST"), ("1-5-9", "YOUNGEST-OLDEST")])
def test_bad_age_ranges_are_one_sentence(text, words):
    with pytest.raises(ConfigError, match=words):
        parse_age_range(text)


@pytest.mark.parametrize("record, fault", [
    ("children", "should be a dictionary"), ({"age_years": [5, 1]}, "youngest first"),
    ({"age_years": [1]}, "two numbers"), ({"age_years": ["1", "5"]}, "two numbers"),
    ({"age_years": [True, 5]}, "two numbers"), ({"source": 3}, "source should be text"),
    ({"view": "x" * 201}, "view should be text"), ({"ages": [1, 5]}, "unknown keys"),
])
def test_a_damaged_record_is_refused_by_the_model_file_with_a_sentence(tiny_model, record, fault):
    raw = {**tiny_model.to_dict(), "population": record}
    with pytest.raises(RunError, match=f"The model file of run r is damaged: the population.*{fault}"):
        checkpoint.from_dict(raw, "r")


@pytest.fixture(scope="module")
def tiny_model() -> checkpoint.ModelFile:
    from cxrdemo.model import backbones

    net = backbones.build_backbone("cnn8", 2)
    return checkpoint.ModelFile("cnn8", ("NORMAL", "PNEUMONIA"), net.state_dict(), checkpoint.Preprocessing(32))


def test_the_record_round_trips_and_an_old_file_loads_unchanged(tiny_model, tmp_path):
    path = tmp_path / "r" / "model.pt"
    path.parent.mkdir()
    checkpoint.save(tiny_model, path)
    assert "population" not in torch.load(path, weights_only=True)  # an older model.pt has none
    old = checkpoint.load(path)
    assert old.population is None and "not stated" in population_line(old.population)
    new = checkpoint.set_population(path, KERMANY_CHILDREN)
    assert checkpoint.load(path).population == new.population == KERMANY_CHILDREN
    assert torch.load(path, weights_only=True)["population"] == {
        "age_years": [1, 5], "source": KERMANY_CHILDREN.source, "view": "frontal (PA/AP)"}
    loaded = checkpoint.load(path)
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in tiny_model.state_dict.items())  # weights untouched
    checkpoint.update_records(path, calibration={"temperature": 1.5, "bias": [0.0, 0.0]})  # a later record keeps it
    assert checkpoint.load(path).population == KERMANY_CHILDREN
    assert checkpoint.set_population(path, None).population is None and checkpoint.load(path).population is None


# ---------------------------------------------------------------- where a run gets it

def test_a_dataset_folder_states_its_population_in_a_file(tmp_path):
    data = make_split_dataset(tmp_path / "adults")
    assert scan_dataset(data).population is None and "population" not in scan_dataset(data).summary()
    (data / "POPULATION.json").write_text(file_text(ADULTS))
    scan = scan_dataset(data)
    assert scan.population == ADULTS and scan.summary()["population"]["age_years"] == [18, 90]
    assert scan.skipped == []  # the file is not an image to skip
    (data / "POPULATION.json").write_text('{"age_years": [90, 18]}')
    with pytest.raises(DatasetError, match="POPULATION.json cannot be used: .*youngest first.*remove it"):
        scan_dataset(data)
    (data / "POPULATION.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not readable JSON"):
        scan_dataset(data)


@pytest.mark.parametrize("data", ["demo", "lesson:bacteria_virus", "lesson:virus_normal", "lesson:leakage"])
def test_the_built_in_kermany_sets_carry_the_children_population(data):
    assert scan_dataset(data).population == KERMANY_CHILDREN


def test_the_shipped_demo_model_and_examples_state_their_population():
    shipped = REPO / "weights" / "demo"
    assert checkpoint.load(shipped / "model.pt").population == KERMANY_CHILDREN
    assert "## Intended population\n\n" + KERMANY_LINE in (shipped / "MODEL_CARD.md").read_text()
    for config in (REPO / "cxrdemo" / "examples" / "runs").glob("*/config.json"):
        assert Population.from_record(json.loads(config.read_text())["dataset"]["population"]) == KERMANY_CHILDREN


def test_a_run_states_inherits_or_takes_its_population_from_its_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDEMO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXRDEMO_THREADS", "1")
    store = tmp_path / "runs"
    own = make_split_dataset(tmp_path / "own", (4, 2, 0))

    def train(data, **kw) -> checkpoint.ModelFile:
        d = runs.create_run(tiny_config(data, **kw), store)
        assert execute_run(d, runs_dir=store)["state"] == "completed"
        return checkpoint.load(d / "model.pt")

    parent = train(own, population_age="1-5", population_source="my ward")
    assert parent.population == Population((1, 5), "my ward")
    parent_id = runs.list_runs(store)[-1].run_id
    assert train(own, init=f"run:{parent_id}").population == parent.population  # same data: inherited
    assert train(own, init=f"run:{parent_id}", population_age="18-90").population == Population((18, 90))  # stated
    other = make_split_dataset(tmp_path / "other", (4, 2, 0))
    assert train(other, init=f"run:{parent_id}").population is None  # other films: not the parent's patients
    (other / "POPULATION.json").write_text(file_text(ADULTS))
    assert train(other, init=f"run:{parent_id}").population == ADULTS  # the folder's file
    assert train(other, population_source="ward 7").population == Population(None, "ward 7")  # stated beats it


# ---------------------------------------------------------------- options and the card

def test_the_population_options_are_flags_and_trainer_fields():
    args = build_parser().parse_args(["train", "--population-age", "1-5", "--population-source", "my ward"])
    config = options.config_from_args(args)
    assert (config.population_age, config.population_source) == ("1-5", "my ward")
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="YOUNGEST-OLDEST"):
        options.config_from_args(build_parser().parse_args(["train", "--population-age", "adults"]))
    specs = {s.name: s for s in trainer_form.widget_specs("population")}
    assert set(specs) == {"population_age", "population_source"}
    assert all(s.kind == "text" and s.default == "" for s in specs.values())
    assert len(specs) <= trainer_form.ROW_WIDGETS["population"]
    assert trainer_form.make_config({"population_age": "18-90"}).population_age == "18-90"
    assert recipe.recipe_from_query({"population_age": "18-90", "population_source": "x"}) == {
        "population_age": "18-90", "population_source": "x"}
    assert recipe.recipe_from_query({"population_age": "old"}) == {}


def test_the_model_card_states_the_population_in_one_line(tmp_path):
    shipped = REPO / "weights" / "demo"
    run = tmp_path / "demo"
    shutil.copytree(shipped, run)
    assert KERMANY_LINE + " Diagnosis and `predict` compare each patient's age" in model_card(run)
    checkpoint.set_population(run / "model.pt", None)  # as a model file from before the record
    assert "## Intended population\n\nWhom this model learnt from is not stated" in model_card(run)
    (run / "model.pt").unlink()  # an example run: what its config.json recorded
    meta = runs.read_json(run / "config.json")
    runs.atomic_write_json(run / "config.json", {**meta, "dataset": {**meta["dataset"],
                                                                     "population": ADULTS.to_record()}})
    assert "of adults aged 18–90 years (St Elsewhere)" in model_card(run)
    runs.atomic_write_json(run / "config.json", {**meta, "config": {**meta["config"], "population_age": "2-3"}})
    assert "Learnt from chest films of children aged 2–3 years." in model_card(run)


def test_a_stated_population_is_its_own_record():
    assert Population.stated("", " ") is None
    assert Population.stated("1-5", " my ward ") == Population((1.0, 5.0), "my ward")
    assert replace(KERMANY_CHILDREN, view="").to_record()["view"] == ""
    with pytest.raises(ConfigError, match="at most 200"):
        Population.stated("", "x" * 201)


def test_the_trainer_page_states_the_population_and_shows_the_folders_file(store, tiny_dataset, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from cxrdemo.runs import jobs

    submitted: list[TrainConfig] = []
    monkeypatch.setattr(jobs, "submit", lambda config, *a, **k: submitted.append(config) or "x")
    at = AppTest.from_file(str(REPO / "app_pages" / "trainer.py"), default_timeout=60)
    at.run()
    assert "POPULATION.json says: Learnt from frontal \\(PA\\/AP\\) chest films of children aged 1–5" in " ".join(
        c.value for c in at.caption)  # the built-in demo set's file
    at.radio(key="source").set_value("A folder on this computer").run()
    at.text_input(key="data_path").input(str(tiny_dataset)).run()
    assert any("Left empty, a run started from another run" in c.value for c in at.caption)
    at.text_input(key="population_age").input("18-90")
    at.text_input(key="population_source").input("ward 7")
    at.button(key="start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [(c.population_age, c.population_source) for c in submitted] == [("18-90", "ward 7")]
