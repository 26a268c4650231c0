"""The fifth lesson, "A model that has never seen an adult", in words and one figure: a reading walkthrough, no
training job. The numbers come from diagnosis/adult_film (each reading the one result `assess` makes)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from cxrdemo.diagnosis.adult_film import AdultReading
from cxrdemo.diagnosis.predict import LoadedModel
from cxrdemo.model import domain
from cxrdemo.views import numbers
from cxrdemo.views.checks import domain_sentence
from cxrdemo.views.diagnosis import decision_sentence, set_sentence
from cxrdemo.views.plots import THRESHOLD_COLOUR
from cxrdemo.views.population import population_line, population_reason

KEY = "adult"
TITLE = "A model that has never seen an adult"
LEVEL = 0.90

NARRATIVE = (
    "The demo model learnt from chest films of young children. This lesson gives it the first film a radiologist "
    "is most likely to try: an adult's. Nothing is trained; the same film is read three times, and each reading is "
    "exactly what the Diagnosis page shows.")

SAMPLE_SOURCE = (
    "The film: **RG1** from the `pydicom-data` package (installed with this app), a computed radiograph of an "
    "adult's chest, PA, shared by the pydicom project as a DICOM test file. Its header carries a birth date and a "
    "study date, from which the age is worked out in memory; only the age in years is shown.")
UPLOAD_SOURCE = (
    "The sample adult film comes with the `pydicom-data` package, which is not installed here "
    "(`pip install pydicom-data`). Upload an adult chest film of your own instead (DICOM with its header, or PNG/"
    "JPEG with the age typed in): it is read in memory and never stored.")

INTENDED_USE = (
    "**Intended use.** A model's numbers - its accuracy, its calibrated probabilities, its prediction sets - hold "
    "only for patients and films like those it learnt from. Its *intended use* says who they are: here, frontal "
    "chest films of children aged 1-5 from one hospital. Outside that, the model still answers, as confidently as "
    "ever, because it has no way to say \"I have never seen this\". The pixel check helps, but it is a distance "
    "between pictures, and an adult's chest is still a chest: some adult films look close enough to pass. The "
    "patient's age does not have that blind spot. That is why even a demo model must state whom it learnt from, and "
    "why the app reads the age from the header (or asks for it) before it shows a prediction.")

LOOK_FOR = (
    "The first reading: an answer as confident as for a child's film, for a patient the model never saw.",
    "The second: the same pixels, the same probabilities; only the age changed what the app says.",
    "The third: where this film's distance sits among the children's validation films, and how close to the cut-off.",
)


def source_words(from_sample: bool) -> str:
    """Where the film comes from."""
    return SAMPLE_SOURCE if from_sample else UPLOAD_SOURCE


def pixels_only_words(model: LoadedModel, reading: AdultReading) -> str:
    """Step 1: the film as a picture alone."""
    r = reading.pixels_only
    caught = (" Here the pixel check caught it (step 3); but it measures how far a picture is from the children's "
              "films, and a differently framed adult film can pass." if r.flagged else
              " Nothing in the picture alone stopped it: the pixel check let it through.")
    return ("**1. The picture alone** (no age known, as for a PNG upload). " + decision_sentence(model, r) + ". "
            + f"The model is {numbers.percent(r.p)} sure of {r.classes[r.predicted]}, as sure as it is of a child's "
            "film: nothing in its probabilities says it has never seen an adult. " + set_sentence(r, LEVEL) + caught)


def with_age_words(model: LoadedModel, reading: AdultReading) -> str:
    """Step 2: the same film with its age checked against the model's population."""
    r = reading.with_age
    head = "**2. With its age.** " + population_line(model.population) + " "
    if r.population is None or r.population.age_years is None:
        return head + ("This film carries no age and none was given: type the patient's age to see the "
                       "population check.")
    return head + population_reason(r.population) + " " + set_sentence(r, LEVEL) + (
        " The probabilities did not change: the age changes what the model's answer is worth, not the answer.")


def distance_words(model: LoadedModel, reading: AdultReading) -> str:
    """Step 3: the in-domain distance against the children's."""
    r = reading.with_age
    if r.domain_score is None:
        return "**3. Its distance from the children's films.** This model has no in-domain description."
    text = "**3. Its distance from the children's films.** " + domain_sentence(
        domain.check_domain(model.domain, r.domain_score))
    share = reading.farther_than
    if share is not None:
        n = len(reading.val_scores)
        text += (f" It is farther than every one of the model's {n} validation films (children's, never trained on)."
                 if share == 1 else f" It is farther than {numbers.percent(share)} of the model's {n} validation "
                 "films (children's, never trained on).")
    return text


def distance_figure(reading: AdultReading) -> go.Figure | None:
    """A small histogram of the validation films' in-domain scores, the cut-off and this film marked (None: the
    model's record keeps no validation scores)."""
    r = reading.with_age
    if reading.val_scores is None or r.domain_score is None or r.domain_cutoff is None:
        return None
    fig = go.Figure(go.Histogram(x=reading.val_scores, nbinsx=40, name="validation films (children)",
                                 marker_color="#7f8c8d", hovertemplate="score %{x}<br>%{y} films<extra></extra>"))
    for x, label, colour, dash in ((r.domain_cutoff, "cut-off", THRESHOLD_COLOUR, "dash"),
                                   (r.domain_score, "this film", "#2c3e50", "solid")):
        fig.add_vline(x=x, line_color=colour, line_dash=dash, annotation_text=label, annotation_position="top")
    top = max(float(np.max(reading.val_scores)), r.domain_score) * 1.08
    fig.update_layout(height=260, margin={"l": 10, "r": 10, "t": 30, "b": 10}, showlegend=False, bargap=0.05,
                      xaxis={"title": "in-domain score (higher: less like the training films)", "range": [0, top]},
                      yaxis={"title": "validation films"})
    return fig
