"""ScoreCAM reports real progress (its forward passes, counted by hooks) and the map is the same with or without."""

from __future__ import annotations

import numpy as np

from cxrdemo.diagnosis import explain, result


def test_scorecam_progress_rises_to_one_and_changes_nothing(patch_model, make_patch_image):
    img, _ = make_patch_image(np.random.default_rng(3), True)
    res = result.assess_image(patch_model, patch_model.preprocessing.prepare(img.astype(np.float32) / 255.0))
    seen: list[float] = []
    hm = explain.heatmap(patch_model, res, "ScoreCAM", progress=seen.append)
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[0] < 0.5
    assert np.array_equal(hm.cam, explain.heatmap(patch_model, res, "ScoreCAM").cam)
    fast: list[float] = []
    explain.heatmap(patch_model, res, "GradCAM", progress=fast.append)
    assert fast == []  # a fast method has nothing to report


def test_the_progress_words():
    from cxrdemo.views.diagnosis import progress_text

    assert progress_text("ScoreCAM", 0.0, None) == "Computing the ScoreCAM heatmap: starting…"
    assert progress_text("ScoreCAM", 0.4, 30.4) == "Computing the ScoreCAM heatmap: 40% done, about 30 s left…"
    assert progress_text("ScoreCAM", 0.01, None) == "Computing the ScoreCAM heatmap: 1% done…"


def test_the_page_makes_a_scorecam_map_once_and_shows_it(patch_store):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    page = str(Path(__file__).resolve().parents[1] / "app_pages" / "diagnosis.py")
    at = AppTest.from_file(page, default_timeout=120)
    at.run()
    at.radio(key="example").set_value("PNEUMONIA example 1").run()
    at.selectbox(key="method").set_value("ScoreCAM").run()
    assert not at.exception, at.exception
    captions = [c for im in at.image for c in im.captions]
    assert captions[1].startswith("ScoreCAM: why the model said ")
    assert not at.get("progress")  # the bar goes once the map is there
    at.slider(key="opacity").set_value(0.7).run()  # a rerun takes the made map: no second computation
    assert not at.exception and not at.get("progress")
