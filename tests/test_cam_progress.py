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
