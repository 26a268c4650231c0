"""What the Diagnosis page says about one prediction, in words."""

from __future__ import annotations

import numpy as np

from cxrdemo.diagnosis.predict import LoadedModel
from cxrdemo.views.words import rule_how


def decision_sentence(model: LoadedModel, probs: np.ndarray, predicted: int) -> str:
    """How the model reached its answer, in words: a tuned threshold can call a class at well under 50%."""
    cls, p = model.classes[predicted], 100 * float(probs[predicted])
    if model.decision.value is None or len(model.classes) != 2:
        return f"Prediction: **{cls}** ({p:.1f}%, the most probable class)"
    pos, p_pos, cut = model.classes[1], 100 * float(probs[1]), 100 * float(model.decision.value)
    side = "at or above" if p_pos >= cut else "below"
    how = rule_how(model.decision.rule)
    return (f"Prediction: **{cls}** — p({pos}) = {p_pos:.1f}% is {side} this model's decision threshold of "
            f"{cut:.1f}%, {how} (its probabilities are scores, not calibrated risks)")
