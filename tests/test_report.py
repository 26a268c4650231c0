"""`python -m cxrdemo report`: a PDF whose text names every image, says "not for clinical use" on every page and
shows the ImageResult's own numbers (written by views/numbers); bad input is one sentence and exit 2."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrdemo import paths
from cxrdemo.cli.main import main as cli
from cxrdemo.diagnosis import explain, predict, result, worklist
from cxrdemo.diagnosis.pointing import Box, Mark, PointingScore
from cxrdemo.views import numbers, report, report_pdf
from cxrdemo.views.diagnosis import set_words
from tests.test_predict import SECRETS, _dicom

FILMS = sorted((paths.PACKAGE_DIR / "demo_data" / "test").glob("*/*"))


def pdf_pages(pdf: bytes) -> list[str]:
    """The text of each page, whitespace collapsed (pdftotext, else pypdf; the test is skipped without either)."""
    if shutil.which("pdftotext"):
        out = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
        pages = out.split("\f")
    else:
        pypdf = pytest.importorskip("pypdf", reason="needs pdftotext (poppler-utils) or pypdf to read the PDF")
        pages = [p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf)).pages]
    return [" ".join(p.split()) for p in pages if p.strip()]


@pytest.fixture(scope="module")
def demo():
    return predict.load_model("demo")


def _run(argv, capsys) -> tuple[int, str, str]:
    code = cli(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_report_names_every_image_and_warns_on_every_page(demo, tmp_path, capsys):
    images = [str(f) for f in FILMS[:2] + FILMS[-2:]]
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all, just a note\n")
    out = tmp_path / "report.pdf"
    code, stdout, err = _run(["report", "--quiet", "--run", "demo", *images, str(bad), "--out", str(out)], capsys)
    assert code == 2  # one file was not an image: the report lists it, and the exit code says so
    assert err.strip() == "error: 1 of 5 files could not be read (the report lists them): notes.png."
    pages = pdf_pages(out.read_bytes())
    assert len(pages) >= 1 + len(images)  # the summary, then a page per film
    for text in pages:
        assert "not for clinical use" in text.lower()
    whole = " ".join(pages)
    for name in [Path(p).name for p in images]:
        assert whole.count(name) >= 2  # in the summary table and as its page's title
    assert "notes.png This file is not an image (it looks like a text file)." in whole
    assert report.NOT_CLINICAL in pages[0]


def test_each_page_shows_the_results_own_numbers(demo, tmp_path, capsys):
    images = FILMS[:3]
    out = tmp_path / "r.pdf"
    code, stdout, _ = _run(["report", "--quiet", *map(str, images), "--out", str(out), "--level", "0.95"], capsys)
    assert code == 0 and '"films": 3' in stdout
    pages = pdf_pages(out.read_bytes())
    for path in images:
        r = result.assess(demo, predict.read_radiograph(str(path), path.name))
        page = next(p for p in pages if f"{path.name} Film " in p)  # its page: the name, then "Film i of n"
        for c, p in zip(r.classes, r.probs):
            assert f"{c} {numbers.percent(p)}" in page
        assert f"at least {numbers.percent(r.threshold)}" in page
        assert f"At 90%: {set_words(r, 0.90)}; at 95%: {set_words(r, 0.95)}" in page
        assert f"Prediction set at 95% coverage: {set_words(r, 0.95)}" in page
        assert "Faithfulness of the heatmap Not computed for this report (ask for it: --faithfulness" in page
        assert "No mark drawn." in page
    front = pages[0]
    assert "Learnt from frontal (PA/AP) chest films of children aged 1–5 years" in front
    assert "Intended use and limits" in front and "Shifted set" in front


def test_faithfulness_when_asked_and_the_mark_with_its_score(demo):
    films = worklist.assess_films(demo, [(FILMS[0].name, FILMS[0])])
    mark = Mark(films[0].digest, films[0].name, Box(0.1, 0.2, 0.4, 0.6), 100, 100,
                scores=(PointingScore("GradCAM", 0.42, 0.12, False, (0.9, 0.9)),))
    shown = explain.heatmap(demo, films[0].result, "EigenCAM")  # the map on screen is the map in the report
    doc = report.build(demo, films, label="demo", faithfulness=True, marks={films[0].digest: mark},
                       heatmaps={films[0].digest: shown})
    (page,) = pdf_pages(report_pdf.write(doc))[1:]
    assert "ROAD" in page and "Removing the highlighted 20%" in page
    assert "Right: EigenCAM: the main pattern in the image" in page
    assert "GradCAM: 42.0% of the map in your box (an even spread: 12.0%), peak outside" in page
    assert doc.pages[0].box == mark.box


def test_a_dicom_shows_view_age_and_sex_and_nothing_else_from_its_header(demo, tmp_path):
    import pydicom

    grey = np.asarray(Image.open(FILMS[0]).convert("L"))
    ds = pydicom.dcmread(io.BytesIO(_dicom(grey)))
    ds.ViewPosition, ds.PatientAge, ds.PatientSex = "PA", "004Y", "F"
    buf = io.BytesIO()
    ds.save_as(buf)
    films = worklist.assess_films(demo, [("film$one.dcm", buf.getvalue())])
    text = " ".join(pdf_pages(report_pdf.write(report.build(demo, films, label="demo"))))
    assert "DICOM header: view PA, age 4 years old, sex female." in text
    assert "film$one.dcm" in text  # a '$' is shown, never typeset
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize("argv, words", [
    (["--out", "{tmp}/missing/r.pdf"], "the folder"),
    (["--out", "{tmp}/r.txt"], "must name a .pdf file"),
    (["--out", "{tmp}/r.pdf", "--method", "Nope"], "Unknown heatmap method"),
    (["--out", "{tmp}/r.pdf", "--run", "no-such-run"], "no-such-run"),
])
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys, argv, words):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, _, err = _run(["report", str(FILMS[0]), *argv], capsys)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.pdf"))


def test_no_readable_image_at_all_is_one_sentence(tmp_path, capsys):
    bad = tmp_path / "a.png"
    bad.write_text("hello\n")
    code, _, err = _run(["report", "--quiet", str(bad), "--out", str(tmp_path / "r.pdf")], capsys)
    assert code == 2 and err.startswith("error: None of the files could be read as an image")
    assert not (tmp_path / "r.pdf").exists()
