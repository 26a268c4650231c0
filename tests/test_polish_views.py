"""Words and pictures behind the demo-day fixes: chance level, heatmap captions, the downloaded overlay."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdemo.views import chance, diagnosis

CLASSES = ["NORMAL", "PNEUMONIA"]


@pytest.mark.parametrize("test, expected", [
    ({"classes": CLASSES, "confusion": [[0, 40], [0, 60]], "auroc": 0.9},
     "predicts PNEUMONIA for every test image: no better than chance"),
    ({"classes": CLASSES, "confusion": [[10, 10], [8, 12]], "auroc": 0.6}, "includes 0.5: no better than chance"),
    ({"classes": CLASSES, "confusion": [[10, 10], [8, 12]], "auroc": 0.6, "auroc_ci": [0.55, 0.7]}, None),
    ({"classes": CLASSES, "confusion": [[300, 30], [20, 400]], "auroc": 0.95}, None),
    (None, None),
])
def test_chance_rule(test, expected):
    got = chance.chance_sentence(test)
    assert (got is None) if expected is None else expected in got


def test_hanley_mcneil_interval_narrows_with_more_images():
    small = chance._auroc_interval({"auroc": 0.7, "confusion": [[10, 0], [0, 10]]})
    large = chance._auroc_interval({"auroc": 0.7, "confusion": [[500, 0], [0, 500]]})
    assert small[0] < 0.5 < small[1] and 0.5 < large[0] < 0.7 < large[1] < 0.75


def test_caption_for_a_class_the_model_did_not_predict():
    probs = np.array([0.9996, 0.0004])
    assert diagnosis.heatmap_caption("GradCAM", CLASSES, probs, 0, 1) == (
        "GradCAM: why it might be PNEUMONIA — the model said NORMAL, p(PNEUMONIA) = 0.0%")
    assert diagnosis.heatmap_caption("GradCAM", CLASSES, probs, 0, 0) == "GradCAM: why the model said NORMAL"


def test_downloaded_overlay_has_a_footer_and_a_telling_name():
    rgb = np.full((300, 400, 3), 128, np.uint8)
    lines = diagnosis.overlay_footer("Demo model (shipped)", "GradCAM", CLASSES, np.array([0.2, 0.8]), 1, 0)
    assert lines[0].startswith("GradCAM heatmap for NORMAL | prediction: PNEUMONIA (p = 80.0%)")
    assert "NOT FOR CLINICAL USE" in lines[1]
    out = diagnosis.with_footer(rgb, lines)
    assert out.shape[0] > 300 and out.shape[1] == 400 and (out[:300] == rgb).all()
    footer = out[300:]
    assert (footer == 255).any() and (footer == 0).mean() > 0.5  # white text on black
    name = diagnosis.overlay_filename("Demo model (shipped)", "GradCAM", CLASSES, 1, 0)
    assert name == "cxrdemo-Demo-model-shipped-GradCAM-NORMAL-heatmap-predicted-PNEUMONIA-NOT-FOR-CLINICAL-USE.png"


def test_the_decision_line_writes_the_threshold_on_the_scale_the_bar_shows():
    from cxrdemo.diagnosis import predict
    from cxrdemo.views import diagnosis as dv

    model = predict.load_model("demo")  # calibrated: T = 1.75 moves the 8.8% cut to about 20.8%
    line, details = dv.decision_line(model)
    assert model.trust.calibrated and dv.percent(model.threshold) in line and dv.percent(model.threshold) in details
    assert dv.percent(model.decision.value) not in line and "calibrated on validation" in details
