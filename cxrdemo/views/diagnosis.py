"""What the Diagnosis page says about one prediction, in words."""

from __future__ import annotations

from cxrdemo.diagnosis.assessment import Assessment
from cxrdemo.diagnosis.predict import LoadedModel
from cxrdemo.views.words import rule_how

COVERAGE_CHOICES = {"90%": 0.90, "95%": 0.95}  # the default first


def decision_sentence(model: LoadedModel, a: Assessment) -> str:
    """How the model reached its answer, read off the probabilities shown (calibrated when the model is)."""
    cls, p = model.classes[a.predicted], 100 * float(a.probs[a.predicted])
    scale = "calibrated" if model.trust.calibrated else "not calibrated: scores, not risks"
    if a.threshold is None or len(model.classes) != 2:
        return f"Prediction: **{cls}** ({p:.1f}%, the most probable class; probabilities {scale})"
    pos, p_pos, cut = model.classes[1], 100 * float(a.probs[1]), 100 * float(a.threshold)
    side = "at or above" if p_pos >= cut else "below"
    how = rule_how(model.decision.rule)
    return (f"Prediction: **{cls}** — p({pos}) = {p_pos:.1f}% is {side} this model's decision threshold of "
            f"{cut:.1f}% (the mark on the bar), {how} (probabilities {scale})")


def set_sentence(model: LoadedModel, a: Assessment) -> str:
    """The prediction set in words: {NORMAL}, {PNEUMONIA}, or that the model cannot tell; or why there is none."""
    if a.prediction_set is None:
        return a.set_note or "No prediction set."
    level = f"{a.level:.0%}"
    if len(a.prediction_set) == 1:
        return (f"Prediction set at {level} coverage: **{{{model.classes[a.prediction_set[0]]}}}** — the model "
                "is confident enough to name one class.")
    names = ", ".join(model.classes[i] for i in a.prediction_set)
    what = "both" if len(a.prediction_set) == 2 else f"{{{names}}}"
    return f"Prediction set at {level} coverage: **{what}** — the model cannot tell at this confidence."


HEADLINE_METRICS = (("accuracy", "Accuracy"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
                    ("auroc", "AUROC"))


def headline_sentence(h: dict) -> str:
    """What an evaluation set is, in one plain sentence (h: one of predict.headlines)."""
    n = h.get("n") or "?"
    if h["label"] == "shifted":
        return (f"Measured on {n} images of {h['set']}, a shifted set: films from another period or source than the "
                "training images — the closer guide to how it does on new films.")
    return (f"Measured on {n} images of {h['set']}, drawn like the training images: expect it to do worse on films "
            "from elsewhere.")


def headline_value(h: dict, key: str) -> str:
    """A metric with its 95% interval when there is one: '0.845 (0.765–0.917)'."""
    v = h["metrics"][key]
    lo_hi = h["ci95"].get(key)
    return f"{v:.3f}" + (f" ({lo_hi[0]:.3f}–{lo_hi[1]:.3f})" if lo_hi else "")
