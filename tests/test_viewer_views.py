"""The viewer's words and figure: the header line, window choices, a plotly selection's box, the sentences, export."""

from __future__ import annotations

import numpy as np

from cxrdemo.data import ImageMeta, window
from cxrdemo.data.window import Window
from cxrdemo.diagnosis.pointing import Box, Mark, PointingScore, score
from cxrdemo.views import viewer as vv


def test_the_header_line_names_view_age_and_sex_only_for_dicom():
    meta = ImageMeta(10, 10, "dicom", "MONOCHROME2", 12, view="PA", age_years=55.4, sex="M")
    assert vv.header_line(meta) == "From the DICOM header: PA view · 55 years old · male."
    assert vv.header_line(ImageMeta(10, 10, "dicom", "MONOCHROME2", 12, sex="O")) == \
        "The DICOM header gives no view, age or sex."
    assert vv.header_line(ImageMeta(10, 10, "png", "L", 8, view="PA")) is None


def test_window_choices_put_the_header_first_and_each_gives_its_window():
    px = window.from_values(np.arange(100, dtype=np.float32).reshape(10, 10),
                            windows=(Window(50, 20), Window(30, 10)))
    choices = vv.window_choices(px)
    assert list(choices) == ["Header window 1 (centre 50, width 20)", "Header window 2 (centre 30, width 10)",
                             "Full range", "Lung", "Mediastinum", "Bone", vv.FREE]
    assert vv.chosen_window(px, choices["Header window 2 (centre 30, width 10)"]) == Window(30, 10)
    free = vv.chosen_window(px, ("free",), (0.25, 0.5))
    assert window.shown_fractions(px, free) == (0.25, 0.5)
    assert vv.window_words(px, Window(1234.4, 800)) == "Centre 1,234, width 800 in the film's stored values."
    assert vv.window_words(window.from_grey(np.zeros((4, 4))), Window(0.5, 0.25)) == \
        "Centre 50%, width 25% of the grey scale."


def test_a_box_comes_back_from_a_streamlit_plotly_selection_on_the_grid():
    selection = {"points": [{"x": 10, "y": 5}], "point_indices": [3],
                 "box": [{"xref": "x", "yref": "y", "x": [300.0, 100.0], "y": [50.0, 150.0]}], "lasso": []}
    assert vv.box_from_selection(selection, width=400, height=200) == Box(0.25, 0.25, 0.75, 0.75)
    assert vv.box_from_selection({"points": [], "box": [], "lasso": []}, 400, 200) is None
    assert vv.box_from_selection(None, 400, 200) is None


def test_the_figure_layers_the_heatmap_over_the_film_with_the_box_and_peak():
    fig = vv.figure(np.zeros((50, 100)), np.ones((8, 8)) * 0.5, 0.4, Box(0.1, 0.2, 0.3, 0.4), (0.5, 0.5), "abc")
    names = [t.name for t in fig.data]
    assert names == ["film", "heatmap", "grid", "peak"] and len(fig.data[2].x) == vv.GRID ** 2
    assert fig.data[1].dx == 100 / 8 and fig.data[1].dy == 50 / 8  # the map covers the whole film
    rect = fig.layout.shapes[0]
    assert (rect.x0, rect.x1, rect.y0, rect.y1) == (10, 30, 10, 20)
    assert fig.layout.dragmode == "select" and fig.layout.uirevision == "abc"
    assert [t.name for t in vv.figure(np.zeros((5, 5)), np.ones((8, 8)), 0.0).data] == ["film", "grid"]


def test_the_sentence_and_table_word_the_scores():
    cam = np.zeros((10, 10))
    cam[2:4, 5:8] = 1.0
    cam[9, 9] = 2.0  # the peak, outside the box
    s = score(cam, Box(0.5, 0.2, 0.8, 0.4), "GradCAM")
    assert s.energy_share == 0.75
    assert vv.pointing_sentence(s) == ("75% of the GradCAM heatmap lies in your box; a map spread evenly would put "
                                       "6% there. Its peak is outside your box.")
    empty = PointingScore("EigenCAM", None, 0.06, None, None)
    assert vv.pointing_sentence(empty) == "The EigenCAM heatmap is empty: it points nowhere."
    table = vv.pointing_table([s, empty])
    assert table.to_dict("records") == [
        {"Method": "GradCAM", "Heatmap in your box": "75%", "Spread evenly": "6%", "× even": "12.5×",
         "Peak in your box": "no"},
        {"Method": "EigenCAM", "Heatmap in your box": "—", "Spread evenly": "6%", "× even": "—",
         "Peak in your box": "—"}]


def test_marks_export_as_csv_safe_for_spreadsheets_and_as_json():
    mark = Mark("ab" * 32, "=cmd.dcm", Box(0, 0, 0.5, 0.5), 100, 100, "demo", "PNEUMONIA",
                (PointingScore("GradCAM", 0.4, 0.25, True, (0.1, 0.1)),))
    text = vv.marks_csv([mark])
    assert text.splitlines()[0].startswith("image,sha256,x0,y0,x1,y1,left_px") and "'=cmd.dcm" in text
    assert '"energy_share": 0.4' in vv.marks_json([mark]) and vv.marks_csv([]) == ""
