"""What the Diagnosis page says about one prediction, in words."""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from cxrdemo import paths
from cxrdemo.data.shrink import SHRINK_MAX_SIDE, display_copy
from cxrdemo.diagnosis.assessment import Assessment
from cxrdemo.diagnosis.predict import LoadedModel, Radiograph
from cxrdemo.errors import RunError
from cxrdemo.runs import store as runs
from cxrdemo.views.chance import chance_sentence
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
    how = rule_how(model.decision.rule) or "where the network's own scores tie, moved by calibration"
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
    if a.outside:
        return (f"Prediction set at {level} coverage: **{what}** — {a.outside}; the {level} promise covers only "
                "chest films like the training images: the model cannot tell.")
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


def headline_title(h: dict) -> str:
    """A short name for an evaluation set, for a narrow column: 'Shifted set: cxr-shift/test, 241 images'."""
    n = f", {h['n']} images" if h.get("n") else ""
    return f"{'Shifted set' if h['label'] == 'shifted' else 'In-distribution'}: {h['set']}{n}"


def headline_cells(h: dict) -> list[tuple[str, str, str | None]]:
    """(metric name, value, its 95% interval or None) of one evaluation set, in the order every page shows them."""
    out = []
    for k, label in HEADLINE_METRICS:
        if isinstance(h["metrics"].get(k), float):
            lo_hi = h["ci95"].get(k)
            out.append((label, f"{h['metrics'][k]:.3f}", f"{lo_hi[0]:.3f}–{lo_hi[1]:.3f}" if lo_hi else None))
    return out


COMPARE_NOTE = ("Each column gives that model's results on its most shifted test set first (95% intervals in "
                "brackets) and its heatmap for the class it predicted, or for the class chosen above.")


def headline_value(h: dict, key: str) -> str:
    """A metric with its 95% interval when there is one: '0.845 (0.765–0.917)'."""
    v = h["metrics"][key]
    lo_hi = h["ci95"].get(key)
    return f"{v:.3f}" + (f" ({lo_hi[0]:.3f}–{lo_hi[1]:.3f})" if lo_hi else "")


def percent(p: float) -> str:
    """The one way a probability or threshold is written on the page: '8.8%'."""
    return f"{100 * float(p):.1f}%"


def heatmap_caption(method: str, classes, probs: np.ndarray, predicted: int, target: int,
                    class_specific: bool = True) -> str:
    """What the heatmap shows; for a class the model did not predict, says so with that class's probability."""
    if not class_specific:
        return f"{method}: the main pattern in the image, whichever class (it does not depend on the class chosen)"
    if target == predicted:
        return f"{method}: why the model said {classes[target]}"
    return (f"{method}: why it might be {classes[target]} — the model said {classes[predicted]}, "
            f"p({classes[target]}) = {percent(probs[target])}")


def decision_line(model: LoadedModel) -> tuple[str, str]:
    """(a one-line decision sentence, the details for a help icon), with the threshold on the scale the bar shows."""
    if model.threshold is None or len(model.classes) != 2:
        return f"Says the most probable of {', '.join(model.classes)}.", "No threshold: the highest probability wins."
    pos, neg = model.classes[1], model.classes[0]
    cut = percent(model.threshold)  # the calibrated scale when the model is calibrated: the mark on the bar
    line = f"Says {pos} when p({pos}) is at least {cut}, otherwise {neg}."
    scale = ("The probabilities are calibrated on validation images." if model.trust.calibrated else
             "The probabilities are scores, not calibrated risks.")
    if model.decision.value is None:  # argmax on the network's scores: calibration moved that point off 50%
        return line, (f"The network's own most probable class; after calibration its 50% point sits at {cut} on "
                      f"the bar. {scale}")
    how = rule_how(model.decision.rule)
    return line, (f"The threshold {cut} was chosen {how.replace('that keeps', 'to keep')}. "
                  f"A tuned threshold can call a finding at well under 50%. {scale}")


def overlay_filename(model_name: str, method: str, classes, predicted: int, target: int) -> str:
    """A download's file name that says what it is: model, method, class shown, prediction, not for clinical use."""
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-")[:60] or "x"

    return (f"cxrdemo-{clean(model_name)}-{clean(method)}-{clean(classes[target])}-heatmap-predicted-"
            f"{clean(classes[predicted])}-NOT-FOR-CLINICAL-USE.png")


def overlay_footer(model_name: str, method: str, classes, probs: np.ndarray, predicted: int, target: int) -> list[str]:
    """The lines drawn under a downloaded overlay."""
    return [(f"{method} heatmap for {classes[target]} | prediction: {classes[predicted]} "
             f"(p = {percent(probs[predicted])}) | model: {model_name}"),
            "cxrdemo research and teaching demo - NOT FOR CLINICAL USE"]


def with_footer(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """The image with a black footer carrying `lines` in white text, drawn into the pixels (HxWx3 uint8)."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = rgb.shape[:2]
    size = max(12, w // 60)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        font = ImageFont.load_default()
    pad, line_h = size // 2, int(size * 1.35)
    out = Image.new("RGB", (w, h + pad * 2 + line_h * len(lines)), "black")
    out.paste(Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)), (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((pad, h + pad + i * line_h), line, fill="white", font=font)
    return np.asarray(out)


def kept_copy(rad: Radiograph) -> Radiograph:
    """The decoded radiograph shrunk to at most 2048 px (what a page keeps across page switches, never the file)."""
    return dataclasses.replace(rad, grey=display_copy(rad.grey, SHRINK_MAX_SIDE))


def wait_text(method: str, seconds: float | None) -> str:
    """What the spinner says while a heatmap is computed; the expected time for a slow method."""
    if seconds is None:
        return "Computing the prediction and the heatmap…"
    return f"Computing the {method} heatmap: about {max(1, round(seconds))} s on this machine…"


def model_chance(model: LoadedModel) -> str | None:
    """The chance-level sentence of a model's test results, or None."""
    return chance_sentence(runs.read_test_metrics(model.path))


def start_words(init: str, runs_dir=None) -> str:
    """How a model started, for a clinician: no id of a run this user does not have."""
    init = str(init)
    if init.startswith("run:") and init[4:] != paths.DEMO_RUN_NAME:
        try:
            runs.run_dir(init[4:], runs_dir)
        except RunError:
            return "fine-tuned from an earlier model"
        return f"fine-tuned from run {init[4:]}"
    return {"scratch": "trained from scratch", "imagenet": "started from ImageNet weights"}.get(
        init, "fine-tuned from the shipped demo model")
