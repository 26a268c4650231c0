"""The viewer on the Diagnosis page (AppTest): a DICOM film's header facts, window presets that change what is shown
and never the verdict, a mark scored against every fast heatmap, and the marks' export."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from cxrdemo.diagnosis import predict
from cxrdemo.diagnosis.pointing import Box, Mark
from cxrdemo.views import viewer as vv
from tests.test_predict import SECRETS, _dicom

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "diagnosis.py")


def _film(make_patch_image) -> bytes:
    """A 12-bit MONOCHROME1 film with a header window, view, age and sex (and identifiers that must not show)."""
    import pydicom

    img, _ = make_patch_image(np.random.default_rng(21), True)
    ds = pydicom.dcmread(io.BytesIO(_dicom(img, "MONOCHROME1", 12, window=(2000, 3000))))
    ds.ViewPosition, ds.PatientAge, ds.PatientSex = "AP", "004Y", "F"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _viewer(at: AppTest) -> dict:
    charts = [c for c in at.get("plotly_chart") if '"name":"grid"' in c.proto.spec.replace(" ", "")]
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def _verdict(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("Prediction:")]


def test_a_dicom_film_windowed_changes_what_is_shown_never_the_verdict(patch_store, make_patch_image):
    raw = _film(make_patch_image)
    at = AppTest.from_file(PAGE, default_timeout=90)
    at.run()
    at.file_uploader(key="upload").upload("Doe_Jane.dcm", raw, "application/dicom").run()
    if at.checkbox:
        at.checkbox[0].check().run()
    assert not at.exception, at.exception
    captions = [c.value.replace("\\", "") for c in at.caption]  # Markdown escapes: the view is the header's text
    assert "From the DICOM header: AP view · 4 years old · female." in captions
    verdict = _verdict(at)
    assert len(verdict) == 1 and not [c for c in at.get("plotly_chart") if "grid" in c.proto.spec]
    at.toggle(key="viewer_on").set_value(True).run()
    assert not at.exception, at.exception
    assert vv.SHOWN_NOT_SEEN in [c.value for c in at.caption]
    window = at.selectbox(key="viewer_window")
    assert window.value == "Header window (centre 2000, width 3000)"  # the film's own window first
    assert "Lung" in window.options and "Bone" in window.options and vv.FREE in window.options
    assert not at.image  # the viewer shows the film; the overlay download stays
    assert any("Download the overlay" in b.proto.label for b in at.get("download_button"))
    sources = {}
    for label in ("Header window (centre 2000, width 3000)", "Lung", "Bone", vv.FREE):
        at.selectbox(key="viewer_window").set_value(label).run()
        assert not at.exception, at.exception
        sources[label] = _viewer(at)["data"][0]["source"]
        assert _verdict(at) == verdict  # the model's answer never moves with the window
    assert len(set(sources.values())) == 4  # each window shows the film differently
    at.toggle(key="viewer_invert").set_value(True).run()
    assert _viewer(at)["data"][0]["source"] != sources[vv.FREE] and _verdict(at) == verdict
    shown = " ".join(c.value for c in at.caption) + " ".join(m.value for m in at.markdown)
    for secret in SECRETS:
        assert secret not in shown


def test_a_mark_is_scored_for_every_fast_method_and_exported(patch_store, make_patch_image):
    raw = _film(make_patch_image)
    digest = predict.digest(raw)
    at = AppTest.from_file(PAGE, default_timeout=90)
    at.run()
    at.file_uploader(key="upload").upload("film.dcm", raw, "application/dicom").run()
    if at.checkbox:
        at.checkbox[0].check().run()
    at.toggle(key="viewer_on").set_value(True).run()
    # a box as the plotly selection would give it (the selection itself is the browser's; see test_viewer_views)
    at.session_state["viewer:marks"] = {digest: Mark(digest, "film.dcm", Box(0.5, 0.0, 1.0, 0.5), 64, 64)}
    at.run()
    assert not at.exception, at.exception
    sentence = next(m.value for m in at.markdown if "of the GradCAM heatmap lies in your box" in m.value)
    assert "a map spread evenly would put 25% there" in sentence  # a quarter of the film
    table = at.dataframe[0].value
    assert list(table["Method"]) == ["GradCAM", "GradCAM++", "EigenCAM", "LayerCAM"]
    spec = _viewer(at)
    assert spec["layout"]["shapes"][0]["x0"] == 32.0 and spec["layout"]["shapes"][0]["y1"] == 32.0  # the box
    mark = at.session_state["viewer:marks"][digest]
    assert mark.model == patch_store.run.name and len(mark.scores) == 4
    rows = json.loads(vv.marks_json([mark]))
    assert [r["method"] for r in rows] == list(table["Method"]) and rows[0]["right_px"] == 64
    assert {b.proto.label for b in at.get("download_button")} >= {"Download my marks (CSV, 1 film)",
                                                                   "Download my marks (JSON)"}
    at.button(key="viewer_clear").click().run()
    assert not at.exception and digest not in at.session_state["viewer:marks"]
    assert not any("lies in your box" in m.value for m in at.markdown)
