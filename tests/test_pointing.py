"""The pointing games on planted heatmaps and boxes: exact shares, peaks, box conversions and the export rows."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdemo.diagnosis.pointing import Box, Mark, mark_rows, score, score_all


def test_a_map_wholly_inside_the_box_scores_one_and_the_baseline_is_the_box_share_of_pixels():
    cam = np.zeros((10, 10), np.float32)
    cam[2:4, 5:8] = 1.0  # 6 pixels
    s = score(cam, Box(0.5, 0.2, 0.8, 0.4), "GradCAM")
    assert s.energy_share == 1.0 and s.uniform_share == pytest.approx(0.06) and s.peak_inside is True
    assert s.lift == pytest.approx(1 / 0.06)
    assert s.peak == (0.55, 0.25)  # the first maximal pixel's centre


def test_a_peak_outside_the_box_and_an_exact_energy_share():
    cam = np.ones((10, 10), np.float32)
    cam[0, 0] = 3.0  # total 99 + 3 = 102
    s = score(cam, Box(0.5, 0.5, 1.0, 1.0))
    assert s.energy_share == pytest.approx(25 / 102) and s.uniform_share == pytest.approx(0.25)
    assert s.peak_inside is False and s.peak == (0.05, 0.05)
    assert s.lift == pytest.approx((25 / 102) / 0.25)


def test_pixel_centres_decide_membership_and_ties_at_the_peak_count_if_any_is_inside():
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = cam[3, 3] = 1.0  # two maxima; only (3, 3) lies in the box
    box = Box(0.6, 0.6, 1.0, 1.0)  # centres 0.625 and 0.875 are in: rows and columns 2 and 3
    assert box.mask(4, 4).sum() == 4
    s = score(cam, box)
    assert s.peak_inside is True and s.energy_share == 0.5 and s.uniform_share == 0.25
    assert score(cam, Box(0.3, 0.3, 0.55, 0.55)).energy_share == 0.0  # centres 0.375 only: no energy there


def test_an_empty_map_scores_no_share_and_no_peak():
    s = score(np.zeros((8, 8)), Box(0, 0, 0.5, 0.5), "EigenCAM")
    assert s.energy_share is None and s.peak_inside is None and s.lift is None and s.uniform_share == 0.25


def test_the_share_does_not_depend_on_the_map_scale_or_resolution_of_a_block_map():
    small = np.zeros((4, 4))
    small[1, 2] = 1.0
    big = np.kron(small, np.ones((8, 8))) * 7.0  # the same map at 32 x 32, scaled
    box = Box(0.5, 0.25, 0.75, 0.5)
    assert score(small, box).energy_share == score(big, box).energy_share == 1.0
    assert score(small, box).uniform_share == score(big, box).uniform_share == 1 / 16


def test_boxes_from_corners_and_from_plotly_pixels():
    assert Box.from_corners(0.8, 0.9, 0.2, -0.5) == Box(0.2, 0.0, 0.8, 0.9)  # any order, clipped to the image
    assert Box.from_corners(0.3, 0.3, 0.3, 0.6) is None  # no width
    assert Box.from_corners(1.2, 0.1, 1.5, 0.4) is None  # off the image
    assert Box.from_corners(float("nan"), 0, 1, 1) is None
    assert Box.from_pixels([150, 50], [20, 80], width=200, height=100) == Box(0.25, 0.2, 0.75, 0.8)
    assert Box.from_pixels([10], [10], 100, 100) is None
    assert Box(0.25, 0.2, 0.75, 0.8).in_pixels(2000, 1000) == (500, 200, 1500, 800)
    assert Box(0.25, 0.2, 0.75, 0.8).area == pytest.approx(0.3)


def test_marks_export_one_row_per_method_with_the_box_in_fractions_and_film_pixels():
    cam = np.zeros((10, 10))
    cam[2:4, 5:8] = 1.0
    box = Box(0.5, 0.2, 0.8, 0.4)
    scores = tuple(score_all({"GradCAM": cam, "EigenCAM": np.zeros((10, 10))}, box))
    mark = Mark(digest="ab" * 32, name="film.dcm", box=box, width=1000, height=500, model="demo",
                target="PNEUMONIA", scores=scores)
    rows = mark_rows([mark, Mark("cd" * 32, "other.png", box, 100, 100)])
    assert [r["method"] for r in rows] == ["GradCAM", "EigenCAM", ""]
    assert rows[0] == {"image": "film.dcm", "sha256": "ab" * 32, "x0": 0.5, "y0": 0.2, "x1": 0.8, "y1": 0.4,
                       "left_px": 500, "top_px": 100, "right_px": 800, "bottom_px": 200, "model": "demo",
                       "explains": "PNEUMONIA", "method": "GradCAM", "energy_share": 1.0, "uniform_share": 0.06,
                       "peak_inside": True}
    assert rows[1]["energy_share"] is None and rows[1]["peak_inside"] is None
    assert rows[2]["energy_share"] is None and rows[2]["image"] == "other.png"
