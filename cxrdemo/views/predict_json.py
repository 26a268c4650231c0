"""What `predict` prints for one image: its one result as a JSON-ready dict (probabilities calibrated)."""

from __future__ import annotations

from cxrdemo.diagnosis.faithfulness import Faithfulness
from cxrdemo.diagnosis.predict import LoadedModel
from cxrdemo.diagnosis.result import LEVELS, ImageResult
from cxrdemo.views import diagnosis as dv
from cxrdemo.views import heatmaps
from cxrdemo.views.population import population_line, population_reason


def line(model: LoadedModel, r: ImageResult, image: str, level: float) -> dict:
    """One JSON line: verdict, calibrated probabilities, the nested sets, the checks, and a debugging field with the
    network's own logits (never a probability a person reads)."""
    out = {"image": image, "class": r.classes[r.predicted],
           "probabilities": {c: round(float(p), 6) for c, p in zip(r.classes, r.probs)},
           "calibrated": r.calibrated, "threshold": None if r.threshold is None else round(float(r.threshold), 6),
           "prediction_set": r.set_names(level), "coverage": level,
           "prediction_sets": {f"{lv:.2f}": r.set_names(lv) for lv in LEVELS},
           "in_domain": r.in_domain, "domain_score": None if r.domain_score is None else round(r.domain_score, 3),
           "looks_like_cxr": r.looks_like_cxr, "warning": r.quality_warning, "outside": r.outside,
           "population": population_line(model.population),
           "in_population": None if r.population is None else r.population.in_population,
           "population_reason": None if r.population is None else population_reason(r.population),
           "debug": {"logits": [round(float(z), 6) for z in r.logits]}}
    notes = [dv.set_note(r, level, model.run_id) if r.prediction_set(level) is None else None,
             None if r.in_domain in (None, True) else dv.domain_words(model, r)]
    if any(notes):
        out["notes"] = [n for n in notes if n]
    return out


def faithfulness(f: Faithfulness) -> dict:
    """The faithfulness reading's numbers (in the calibrated probability the JSON's `probabilities` give)."""
    return {**f.to_dict(), "reading": heatmaps.faithfulness_reading(f)}
