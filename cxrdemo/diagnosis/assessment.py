"""One image, everything a clinician needs to weigh the answer: calibrated probabilities, the verdict read off them,
the prediction set at a chosen coverage, and whether the image is like the ones the model learned from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cxrdemo.diagnosis.predict import LoadedModel
from cxrdemo.errors import ConfigError
from cxrdemo.model import conformal, domain, metrics, trust

LEVELS = conformal.LEVELS
DEFAULT_LEVEL = conformal.DEFAULT_LEVEL


@dataclass(frozen=True)
class Assessment:
    """The answer for one image; the domain fields are None when the model has no in-domain record."""

    probs: np.ndarray  # calibrated probabilities, K (the network's own when the model has no temperature)
    predicted: int  # the verdict: the model's decision rule, read off the calibrated probabilities
    threshold: float | None  # the decision cut on p(class 1), calibrated scale; None = the most probable class
    level: float
    prediction_set: tuple[int, ...] | None  # class indices, always holding the verdict; None: see set_note
    set_note: str | None  # why there is no set
    in_domain: bool | None
    domain_score: float | None
    domain_sentence: str | None
    outside: str | None = None  # why the image is outside the sets' promise (its set is then every class)

    def set_names(self, classes: tuple[str, ...]) -> list[str] | None:
        """The prediction set as class names (None when there is no set)."""
        return None if self.prediction_set is None else [classes[i] for i in self.prediction_set]


def assess(model: LoadedModel, image_u8: torch.Tensor, level: float = DEFAULT_LEVEL,
           passed_gate: bool = True) -> Assessment:
    """Calibrated probabilities, verdict, prediction set and domain check of one prepared image (uint8 1xSxS).

    An image the in-domain check flags, or one that failed the quality gate (`passed_gate` False: its pixels or its
    DICOM header say it is not a frontal chest radiograph), is outside the sets' promise: its set is every class."""
    if level not in LEVELS:
        raise ConfigError(f"The coverage must be one of {', '.join(f'{lv:.0%}' for lv in LEVELS)}; got {level}.")
    batch = image_u8.unsqueeze(0) if image_u8.dim() == 3 else image_u8
    dom = model.domain
    with model.lock:
        logits, feats = trust.logits_and_features(model.net, batch, model.preprocessing)
        scores = trust.domain_scores(model.net, batch, model.preprocessing, dom, feats)
    score = None if scores is None else float(scores[0])
    inside = None if score is None else domain.in_domain(dom, score)
    probs = model.trust.probabilities(logits)[0]
    cut = model.threshold
    predicted = int(metrics.predict_labels(probs[None], cut)[0])  # the same verdict as on the network's own scale
    outside = ("this image is unlike the training images" if inside is False else
               None if passed_gate else "this image did not pass the check that it is a frontal chest radiograph")
    record = model.conformal.get(level)
    if record is None:
        pset, note = None, ("This model has no prediction sets: add them with "
                            f"`python -m cxrdemo calibrate --run {model.run_id}`.")
    elif not record.ok:
        pset, note = None, record.reason
    else:
        pset, note = conformal.prediction_set(probs, record, predicted, outside=outside is not None), None
    return Assessment(probs, predicted, cut, level, pset, note, inside, score,
                      None if score is None else domain.domain_sentence(dom, score), outside)
