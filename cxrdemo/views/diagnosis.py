"""What the Diagnosis page says about one prediction, in words."""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from cxrdemo import paths
from cxrdemo.data.shrink import SHRINK_MAX_SIDE, display_copy
from cxrdemo.diagnosis.result import OUTSIDE_DOMAIN, OUTSIDE_POPULATION, OUTSIDE_QUALITY, ImageResult
from cxrdemo.diagnosis.predict import LoadedModel, Radiograph
from cxrdemo.errors import RunError
from cxrdemo.model import domain, metrics
from cxrdemo.runs import store as runs
from cxrdemo.views import numbers
from cxrdemo.views.chance import chance_sentence
from cxrdemo.views.checks import domain_sentence
from cxrdemo.views.numbers import percent
from cxrdemo.views.text import escape_markdown
from cxrdemo.views.words import rule_how

COVERAGE_CHOICES = {"90%": 0.90, "95%": 0.95}  # the default first
DEFAULT_LEVEL = 0.90


def decision_sentence(model: LoadedModel, r: ImageResult) -> str:
    """How the model reached its answer, read off the probabilities shown (calibrated when the model is)."""
    cls, p = r.classes[r.predicted], percent(r.probs[r.predicted])
    scale = "calibrated" if r.calibrated else "not calibrated: scores, not risks"
    if r.threshold is None or len(r.classes) != 2:
        return f"Prediction: **{cls}** ({p}, the most probable class; probabilities {scale})"
    pos, p_pos = r.classes[1], float(r.probs[1])
    side = "at or above" if p_pos >= r.threshold else "below"
    how = rule_how(model.decision.rule) or "where the network's own scores tie, moved by calibration"
    return (f"Prediction: **{cls}** — p({pos}) = {percent(p_pos)} is {side} this model's decision threshold of "
            f"{percent(r.threshold)} (the mark on the bar), {how} (probabilities {scale})")


OUTSIDE_WORDS = {OUTSIDE_POPULATION: "this patient is outside the population the model learnt from",
                 OUTSIDE_DOMAIN: "this image is unlike the training images",
                 OUTSIDE_QUALITY: "this image did not pass the check that it is a frontal chest radiograph"}


def set_note(r: ImageResult, level: float, run_id: str = "RUN", markdown: bool = False) -> str:
    """Why there is no prediction set at `level` (as Markdown: the record's reason names classes, which are folder
    names, so it is escaped)."""
    why = r.set_missing.get(level, "")
    if why == "no-record" or not why:
        return f"This model has no prediction sets: add them with `python -m cxrdemo calibrate --run {run_id}`."
    return escape_markdown(why) if markdown else why


def set_words(r: ImageResult, level: float) -> str:
    """The set in a few words for a table cell or a footer: '{PNEUMONIA}', 'both', or '—' when there is none."""
    s = r.prediction_set(level)
    if s is None:
        return "—"
    if len(s) == len(r.classes) and len(s) == 2:
        return "both"
    return "{" + ", ".join(r.classes[i] for i in s) + "}"


def set_sentence(r: ImageResult, level: float, run_id: str = "RUN") -> str:
    """The prediction set in words: {NORMAL}, {PNEUMONIA}, or that the model cannot tell; or why there is none."""
    s = r.prediction_set(level)
    if s is None:
        return set_note(r, level, run_id, markdown=True)
    at = f"Prediction set at {level:.0%} coverage: **{set_words(r, level)}**"
    if len(s) == 1:
        return f"{at} — the model is confident enough to name one class."
    if r.outside == OUTSIDE_POPULATION:
        return (f"{at} — {OUTSIDE_WORDS[r.outside]}; the {level:.0%} promise covers only patients like the "
                "training patients: the model cannot tell.")
    if r.outside:
        return (f"{at} — {OUTSIDE_WORDS[r.outside]}; the {level:.0%} promise covers only chest films like the "
                "training images: the model cannot tell.")
    return f"{at} — the model cannot tell at this confidence."


def domain_words(model: LoadedModel, r: ImageResult) -> str | None:
    """The in-domain check's sentence, or None when the model has no check."""
    return None if r.domain_score is None else domain_sentence(domain.check_domain(model.domain, r.domain_score))


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


def headline_cells(h: dict, classes=("NORMAL", "PNEUMONIA")) -> list[tuple[str, str]]:
    """(metric name, value with its 95% interval) of one evaluation set, in the order every page shows them; a
    proportion of 0 or 1 reads as its count ('all 37 NORMAL films called NORMAL; 95% interval 90.5–100%')."""
    found = {k: h["metrics"][k] for k, _ in HEADLINE_METRICS if isinstance(h["metrics"].get(k), (int, float))}
    shown = metrics.estimates(found, h.get("ci95") or {}, h.get("confusion") or h["metrics"].get("confusion"))
    return [(label, numbers.estimate(shown[k], classes)) for k, label in HEADLINE_METRICS if k in shown]


COMPARE_NOTE = ("Each column gives that model's results on its most shifted test set first (95% intervals in "
                "brackets) and its heatmap for the class it predicted, or for the class chosen above.")


def headline_value(h: dict, key: str) -> str:
    """A metric with its 95% interval when there is one: '84.5% (76.5–91.7%)'."""
    return dict(headline_cells(h)).get(dict(HEADLINE_METRICS)[key], numbers.MISSING)


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


def overlay_footer(model_name: str, r: ImageResult, method: str, target: int,
                   level: float = DEFAULT_LEVEL) -> list[str]:
    """The lines drawn under a downloaded overlay: the same verdict, probability and set as the page."""
    c = r.classes
    return [f"{method} heatmap for {c[target]}",
            f"Prediction: {c[r.predicted]} (p = {percent(r.p)}{', calibrated' if r.calibrated else ''}) | "
            f"set at {level:.0%}: {set_words(r, level)}",
            f"Model: {model_name}",
            "cxrdemo research and teaching demo - NOT FOR CLINICAL USE"]


FOOTER_MIN_WIDTH = 640  # px: a narrower overlay is enlarged, so that the footer's text stays readable
FOOTER_FONT_PX = 18  # at FOOTER_MIN_WIDTH; larger images get proportionally larger text


def _wrap(text: str, font, width: float) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` (a single longer word is cut at a character)."""
    lines, line = [], ""
    for word in text.split(" "):
        trial = f"{line} {word}" if line else word
        if font.getlength(trial) <= width:
            line = trial
            continue
        if line:
            lines.append(line)
        while font.getlength(word) > width:  # one unbroken word wider than the image: cut it
            n = max(1, int(len(word) * width / font.getlength(word)))
            lines.append(word[:n])
            word = word[n:]
        line = word
    return [*lines, line] if line else lines


def with_footer(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """The image with a black footer carrying `lines` in white text under it (HxWx3 uint8): never cropped, a
    narrow image is enlarged first and long lines wrap."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if img.width < FOOTER_MIN_WIDTH:
        img = img.resize((FOOTER_MIN_WIDTH, round(img.height * FOOTER_MIN_WIDTH / img.width)), Image.BILINEAR)
    w, h = img.size
    size = max(FOOTER_FONT_PX, round(FOOTER_FONT_PX * w / FOOTER_MIN_WIDTH))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        font = ImageFont.load_default()
    pad, line_h = size // 2, int(size * 1.35)
    wrapped = [part for line in lines for part in _wrap(line, font, w - 2 * pad)]
    out = Image.new("RGB", (w, h + pad * 2 + line_h * len(wrapped)), "black")
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(wrapped):
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


def progress_text(method: str, share: float, seconds_left: float | None) -> str:
    """What the progress bar says while a slow heatmap is made: the share done and the time left, as measured."""
    if share <= 0:
        return f"Computing the {method} heatmap: starting…"
    left = "" if seconds_left is None else f", about {max(1, round(seconds_left))} s left"
    return f"Computing the {method} heatmap: {share:.0%} done{left}…"


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
