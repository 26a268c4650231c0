"""Whom a model learnt from, and whether this patient is one of them, in words (model card, Diagnosis, predict).

Only the age in years (months, weeks or days for babies) is ever worded; never a date.
"""

from __future__ import annotations

from typing import Callable

from cxrdemo.diagnosis.population import PopulationCheck
from cxrdemo.population import Population, age_in_completed_years
from cxrdemo.views.text import escape_markdown

ADULT = 18  # years: the youngest age the words call an adult


def _years(x: float) -> str:
    return f"{x:g}"


def ages_words(ages: tuple[float, float]) -> str:
    """'children aged 1–5 years', 'adults aged 18–90 years', 'patients aged 0–90 years'."""
    low, high = ages
    who = "children" if high < ADULT else ("adults" if low >= ADULT else "patients")
    span = _years(low) if low == high else f"{_years(low)}–{_years(high)}"
    return f"{who} aged {span} year{'' if span == '1' else 's'}"


def population_line(population: Population | None, escape: Callable[[str], str] = str) -> str:
    """One line for the model card, Diagnosis and predict: 'Learnt from frontal (PA/AP) chest films of children
    aged 1–5 years (Guangzhou ..., Kermany et al. 2018).' `escape` words user-given text for its medium."""
    if population is None:
        return ("Whom this model learnt from is not stated: it cannot tell whether a patient is like its training "
                "patients.")
    films = f"{escape(population.view)} chest films" if population.view else "chest films"
    who = f" of {ages_words(population.age_years)}" if population.age_years else ""
    where = f" ({escape(population.source)})" if population.source else ""
    unknown = "" if population.age_years else "; the patients' ages are not stated"
    return f"Learnt from {films}{who}{where}{unknown}."


def age_words(age: float) -> str:
    """'55 years old', '1 year old', '6 months old', '3 weeks old', '3 days old': completed units, as people say."""
    if age >= 1:
        n, unit = age_in_completed_years(age), "year"
    elif age >= 1 / 12:
        n, unit = age_in_completed_years(age * 12), "month"
    elif age >= 7 / 365.25:
        n, unit = age_in_completed_years(age * 365.25 / 7), "week"
    else:
        n, unit = round(age * 365.25), "day"
    return f"{n} {unit}{'' if n == 1 else 's'} old"


def population_reason(check: PopulationCheck) -> str:
    """Why the image is (or may not be) in the model's population: 'the header says the patient is 55 years old;
    this model learnt from children aged 1–5 years'."""
    said = {"header": "The DICOM header says", "stated": "You said"}.get(check.age_from, "")
    age = f"{said} the patient is {age_words(check.age_years)}" if check.age_years is not None else ""
    if check.low is None or check.high is None:
        why = "this model does not state the ages it learnt from, so the age cannot be checked"
        return f"{age}; {why}." if age else f"{why[0].upper()}{why[1:]}."
    learnt = ages_words((check.low, check.high))
    if check.in_population is None:
        return (f"The patient's age is not known (no age in a DICOM header, none given): this model learnt from "
                f"{learnt}.")
    if check.in_population:
        return f"{age}, within the ages this model learnt from ({learnt})."
    return f"{age}; this model learnt from {learnt} only."


def form_note(dataset: Population | None) -> str:
    """What the Trainer's population fields mean for the chosen dataset (its POPULATION.json, if any)."""
    if dataset is not None:
        return (f"This folder's POPULATION.json says: {population_line(dataset, escape_markdown)} Fill in the fields "
                "only to state otherwise.")
    return ("Say whom the training films come from: Diagnosis then flags a patient outside these ages. Left empty, "
            "a run started from another run on the same data keeps that run's population; otherwise it is not stated.")
