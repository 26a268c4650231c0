"""The intended population in the one result: a header age or a stated age outside the model's population flags the
film with the reason, its sets are every class, the Diagnosis page asks for 'run anyway', predict says why."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cxrdemo import paths
from cxrdemo.cli.main import main as cli
from cxrdemo.diagnosis import predict, result

FILM = sorted((paths.PACKAGE_DIR / "demo_data" / "test" / "NORMAL").glob("*"))[0]
PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "diagnosis.py")


def adult_dicom(age: str = "055Y") -> bytes:
    """A CR chest DICOM whose header gives the patient's age (pixels: a built-in paediatric film)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    img = np.asarray(Image.open(FILM).convert("L"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientAge, ds.PatientSex = "Doe^John", "PID-77", age, "M"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = img.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def demo():
    return predict.load_model("demo")


def test_an_adult_header_age_flags_the_film_and_its_sets_are_both(demo):
    rad = predict.read_radiograph(adult_dicom(), "adult.dcm")
    assert rad.meta.age_years == 55 and rad.meta.sex == "M"
    res = result.assess(demo, rad)
    child = result.assess(demo, predict.read_radiograph(str(FILM), FILM.name))
    assert res.population.in_population is False and res.population.age_from == "header"
    assert res.outside == result.OUTSIDE_POPULATION and res.flagged
    assert res.sets == {0.90: (0, 1), 0.95: (0, 1)}  # outside the sets' promise at every coverage
    assert res.predicted == child.predicted and np.allclose(res.probs, child.probs, atol=0.02)  # same pixels
    assert child.population.in_population is None and not child.flagged  # no age known: nothing to flag


def test_a_stated_age_is_checked_when_the_header_has_none(demo):
    rad = predict.read_radiograph(str(FILM), FILM.name)
    assert result.assess(demo, rad, stated_age=40).population.in_population is False
    assert result.assess(demo, rad, stated_age=3).population.in_population is True
    assert result.assess(demo, rad, stated_age=5.9).population.in_population is True  # "aged 1-5": completed years
    header = predict.read_radiograph(adult_dicom("004Y"), "child.dcm")
    assert result.assess(demo, header, stated_age=40).population.age_from == "header"  # the header wins


def test_predict_age_40_on_a_paediatric_film_flags_it(capsys):
    assert cli(["predict", "--run", "demo", "--age", "40", str(FILM)]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["in_population"] is False and line["prediction_set"] == ["NORMAL", "PNEUMONIA"]
    assert "40 years old" in line["population_reason"] and "children aged 1–5 years" in line["population_reason"]
    assert line["population"].startswith("Learnt from frontal")
    assert cli(["predict", "--run", "demo", "--age", "3", str(FILM)]) == 0
    assert json.loads(capsys.readouterr().out)["in_population"] is True
    assert cli(["predict", "--run", "demo", str(FILM)]) == 0
    assert json.loads(capsys.readouterr().out)["in_population"] is None


@pytest.mark.parametrize("age", ["abc", "-1", "200"])
def test_a_bad_stated_age_is_one_sentence_and_exit_2(age, capsys):
    assert cli(["predict", "--run", "demo", "--age", age, str(FILM)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "age must be a number of years from 0 to 130" in err


def test_the_page_warns_with_the_age_and_asks_before_showing_the_answer(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert any(c.value.startswith("Learnt from frontal") for c in at.caption)  # whom it is for, before an upload
    at.file_uploader(key="upload").upload("adult.dcm", adult_dicom(), "application/dicom").run()
    assert not at.exception, at.exception
    warning = next(w.value.replace("\\", "") for w in at.warning if "years old" in w.value)
    assert "DICOM header says the patient is 55 years old" in warning and "children aged 1–5 years" in warning
    assert not [m for m in at.markdown if m.value.startswith("Prediction:")]  # not before "run anyway"
    assert at.image  # the film itself is shown: a radiologist judges the warning by looking at it
    at.checkbox[0].check().run()
    sets = [m.value for m in at.markdown if m.value.startswith("Prediction set at 90%")]
    assert sets and "**both**" in sets[0] and "outside the population" in sets[0]
    shown = " ".join(str(e.value) for e in (*at.markdown, *at.caption, *at.warning))
    assert "Doe" not in shown and "PID-77" not in shown
