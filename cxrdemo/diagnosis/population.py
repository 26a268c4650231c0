"""Is the patient in the population the model learnt from? The age from the DICOM header, else the stated one.

Data only: views/population.py words the answer. The check never guesses an age from the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrdemo.population import Population, age_in_completed_years


@dataclass(frozen=True)
class PopulationCheck:
    """The answer: in_population is None when the age or the model's ages are unknown."""

    in_population: bool | None
    age_years: float | None  # the age checked (None: none known)
    age_from: str | None  # "header" | "stated" | None
    low: float | None  # the model's youngest and oldest training ages (None: not stated)
    high: float | None


def within(age: float, ages: tuple[float, float]) -> bool:
    """Whether `age` lies in (youngest, oldest): from the youngest exactly, to the oldest in completed years, as
    ages are said ('children aged 1-5' includes a child of 5 years 11 months, not one of 6)."""
    low, high = ages
    return age >= low - 1e-9 and age_in_completed_years(age) <= high


def check_population(population: Population | None, header_age: float | None,
                     stated_age: float | None = None) -> PopulationCheck:
    """Check the header's age (ImageMeta.age_years) first, else the age the user stated (validated by
    population.parse_age), against the model's population record (ModelFile.population)."""
    age, age_from = (header_age, "header") if header_age is not None else (
        (stated_age, "stated") if stated_age is not None else (None, None))
    ages = population.age_years if population else None
    low, high = ages if ages else (None, None)
    inside = None if age is None or ages is None else within(age, ages)
    return PopulationCheck(inside, age, age_from, low, high)
