"""The worklist: one ImageResult per file through result.assess, kept shrunk; unreadable files as rows; the table's
cells read off the result (views/numbers, set_words); the flagged and doubtful films first; safe exports."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from cxrdemo import paths
from cxrdemo.data.shrink import DISPLAY_MAX_SIDE
from cxrdemo.diagnosis import predict, result, worklist
from cxrdemo.diagnosis.pointing import Box, Mark, PointingScore
from cxrdemo.diagnosis.faithfulness import torch_threads
from cxrdemo.views import numbers
from cxrdemo.views import worklist as wv
from cxrdemo.views.diagnosis import set_words

FILMS = sorted((paths.PACKAGE_DIR / "demo_data" / "test").glob("*/*"))
BAD = ("notes.txt", b"not an image at all, just a note\n")


@pytest.fixture(scope="module")
def demo():
    return predict.load_model("demo")


@pytest.fixture(scope="module")
def films(demo):
    sources = [(f.name, f) for f in FILMS] + [BAD, ("gone.png", "/nonexistent/gone.png")]
    return worklist.assess_films(demo, sources)


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_every_film_gets_the_one_result_of_result_assess(demo, films):
    assert [f.name for f in films[:20]] == [f.name for f in FILMS]
    for f, path in zip(films, FILMS):
        with torch_threads(None):  # bit for bit: the same arithmetic as the worklist's (torch's own threads)
            one = result.assess(demo, predict.read_radiograph(str(path), path.name))
        assert f.readable and f.error is None and f.digest == one.digest
        np.testing.assert_array_equal(f.result.probs, one.probs)
        assert (f.result.predicted, f.result.sets, f.result.in_domain) == (one.predicted, one.sets, one.in_domain)


def test_unreadable_files_are_rows_with_the_readers_sentence(films):
    text, gone = films[20], films[21]
    assert not text.readable and text.error == "This file is not an image (it looks like a text file)."
    assert not gone.readable and "could not be opened" in gone.error and gone.digest == ""
    assert not text.needs_look and wv.look_reasons(text) == ["could not be read"]


def test_films_are_kept_shrunk_and_the_large_pixels_dropped(demo):
    rng = np.random.default_rng(3)
    big = (rng.random((1500, 2600)) * 255).astype(np.uint8)
    (f,) = worklist.assess_films(demo, [("big.png", _png(big))])
    assert f.display.dtype == np.uint8 and max(f.display.shape) <= DISPLAY_MAX_SIDE
    assert max(f.thumbnail.shape) <= worklist.THUMB_SIDE
    assert not any(isinstance(v, np.ndarray) and v.size > DISPLAY_MAX_SIDE ** 2 for v in vars(f).values())
    # the model read the file as read_radiograph reads it, not the display copy
    with torch_threads(None):
        one = result.assess(demo, predict.read_radiograph(_png(big), "big.png"))
    np.testing.assert_array_equal(f.result.probs, one.probs)


def test_progress_is_called_once_per_film_and_known_films_are_not_read_again(demo, films, monkeypatch):
    seen = []
    sources = [(f.name, f) for f in FILMS[:3]] + [BAD]
    first = worklist.assess_films(demo, sources, progress=lambda i, n, film: seen.append((i, n, film.name)))
    assert seen == [(1, 4, FILMS[0].name), (2, 4, FILMS[1].name), (3, 4, FILMS[2].name), (4, 4, "notes.txt")]
    known = {f.digest: f for f in first if f.readable}
    monkeypatch.setattr(worklist, "assess", lambda *a, **k: pytest.fail("a known film was assessed again"))
    again = list(worklist.iter_films(demo, [("renamed.jpg", FILMS[1])], known=known))
    assert again[0].name == "renamed.jpg" and again[0].result is first[1].result


def test_a_worklist_reads_at_most_max_films(demo, monkeypatch):
    monkeypatch.setattr(worklist, "MAX_FILMS", 2)
    assert len(worklist.assess_films(demo, [BAD] * 5)) == 2


def test_folder_sources_lists_image_files_and_leaves_hidden_ones_out(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / ".hidden").mkdir()
    for p in ("a/x.png", "b.JPG", "c.txt", ".DS_Store.png", ".hidden/y.png"):
        (tmp_path / p).write_bytes(b"")
    assert [n for n, _ in worklist.folder_sources(tmp_path)] == ["x.png", "b.JPG"]
    assert len(worklist.folder_sources(paths.EXAMPLES_DIR)) == 20


def test_the_table_reads_each_cell_off_the_result(films):
    df = wv.table(films, 0.90, thumbnails=False)
    assert len(df) == len(films)
    for f, (_, row) in zip(films, df.iterrows()):
        if not f.readable:
            assert row[wv.VERDICT] == numbers.MISSING and row[wv.LOOK] == "could not be read"
            continue
        r = f.result
        assert row[wv.FILE] == f.name and row[wv.VERDICT] == r.classes[r.predicted]
        assert row["p(PNEUMONIA)"] == numbers.percent(r.probs[1])
        assert row["Set (90%)"] == set_words(r, 0.90)
        assert row[wv.DOMAIN] == ("yes" if r.in_domain else "no")
        assert bool(row[wv.LOOK]) == (r.doubtful or r.flagged)
    thumbs = wv.table(films[:1])[wv.THUMB]
    assert thumbs[0].startswith("data:image/png;base64,")


def test_films_that_need_a_look_come_first_then_the_unreadable_ones(films):
    order = wv.ordered(films)
    ranks = [0 if f.needs_look else 1 if not f.readable else 2 for f in order]
    assert ranks == sorted(ranks) and ranks[0] == 0  # the demo films hold three "both" answers
    assert sum(f.needs_look for f in films) == 3
    by_p = [wv.p_shown(f) for f in wv.ordered(films, "Highest probability first") if f.readable]
    assert by_p == sorted(by_p, reverse=True)
    assert [f.index for f in wv.ordered(films, "As given")] == list(range(len(films)))
    assert wv.summary(films) == "20 films read: 3 need a look, 2 could not be read."


def test_the_exports_carry_the_results_numbers_and_are_safe_in_a_spreadsheet(demo, films):
    evil = worklist.assess_films(demo, [("=HYPERLINK(x).jpg", FILMS[0])])
    mark = Mark(films[0].digest, films[0].name, Box(0.25, 0.25, 0.75, 0.5), 100, 100,
                scores=(PointingScore("GradCAM", 0.42, 0.125, True, (0.5, 0.4)),))
    rows = list(csv.DictReader(io.StringIO(wv.to_csv(evil + films, {films[0].digest: mark}).decode())))
    assert rows[0]["file"] == "'=HYPERLINK(x).jpg"
    r = films[0].result
    assert float(rows[1]["p_PNEUMONIA"]) == round(float(r.probs[1]), numbers.CSV_DIGITS)
    assert rows[1]["set_90"] == "|".join(r.set_names(0.90)) and rows[1]["mark_energy_GradCAM"] == "0.42"
    assert rows[1]["mark_area"] == "0.125" and rows[1]["mark_peak_inside_GradCAM"] == "True"
    data = json.loads(wv.to_json(films))
    assert data[0]["verdict"] == r.classes[r.predicted] and data[0]["sha256"] == films[0].digest
    assert data[20]["error"] == films[20].error and "verdict" not in data[20]


def test_a_mark_is_worded_with_the_even_spread_it_is_compared_with():
    mark = Mark("d" * 64, "x.png", Box(0.1, 0.2, 0.4, 0.6), 200, 100,
                scores=(PointingScore("GradCAM", 0.42, 0.12, True, (0.2, 0.3)),
                        PointingScore("EigenCAM", 0.05, 0.12, False, (0.9, 0.9))))
    assert mark.area == pytest.approx(0.12)
    assert wv.mark_words(mark, "GradCAM") == ("GradCAM: 42.0% of the map in your box (an even spread: 12.0%), "
                                              "peak inside")
    assert "EigenCAM: 5.0%" in wv.mark_words(mark)


def test_the_viewers_mark_gives_the_worklist_and_report_each_scored_methods_share_and_peak():
    box = Box(0.1, 0.2, 0.4, 0.6)
    scores = (PointingScore("GradCAM", 0.42, 0.12, True, (0.2, 0.3)),
              PointingScore("EigenCAM", None, 0.12, None, None))  # an empty map: no share, no peak
    mark = Mark("d" * 64, "x.png", box, 200, 100, "demo", "PNEUMONIA", scores)
    assert mark.box.corners == (0.1, 0.2, 0.4, 0.6) and mark.area == pytest.approx(0.12)
    assert mark.energy == {"GradCAM": 0.42} and mark.peak_inside == {"GradCAM": True}
