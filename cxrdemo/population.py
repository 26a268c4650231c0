"""Whom a model's training films came from: the population record, and the ages a user states, parsed once.

One value type for every place a population is written: a TrainConfig option (`--population-age 1-5`), a
dataset folder's POPULATION.json, a model file's `population` record. Each boundary turns the record's fault
into its own error type; the fault itself is worded here, once. A record may leave any part unstated.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from cxrdemo.errors import ConfigError

MAX_AGE = 130  # years: an age above it is a typing or header error, not a patient
FILE_NAME = "POPULATION.json"  # a dataset folder may carry its population in this file at its root
_RANGE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(?:-|–|to)\s*([0-9]+(?:\.[0-9]+)?)\s*$")
_TEXT_LIMIT = 200  # characters of source and view: a line on a card, not a document
_KEYS = {"age_years", "source", "view"}
_INDENT = 2  # POPULATION.json is read and written by people


@dataclass(frozen=True)
class Population:
    """Whom the training films came from: patients' ages in years (low, high), where from, which views."""

    age_years: tuple[float, float] | None = None
    source: str = ""  # e.g. "Guangzhou Women and Children's Medical Center, Kermany et al. 2018"
    view: str = ""  # e.g. "frontal (PA/AP)"

    def to_record(self) -> dict:
        """The record as model.pt, POPULATION.json and config.json keep it."""
        ages = [int(a) if float(a).is_integer() else a for a in self.age_years] if self.age_years else None
        return {"age_years": ages, "source": self.source, "view": self.view}

    @classmethod
    def from_record(cls, record: Any) -> Population:
        """A record read from a file; ConfigError naming its fault (the caller says which file)."""
        if not isinstance(record, dict):
            raise ConfigError("the population record should be a dictionary {age_years, source, view}")
        unknown = sorted(map(str, set(record) - _KEYS))
        if unknown:
            raise ConfigError(f"the population record has unknown keys ({', '.join(unknown)}); it may hold "
                              "age_years, source and view")
        ages = record.get("age_years")
        if ages is not None:
            if (not isinstance(ages, (list, tuple)) or len(ages) != 2
                    or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in ages)):
                raise ConfigError(f"the population's age_years should be two numbers [youngest, oldest], "
                                  f"not {ages!r:.40}")
            try:
                ages = _check_range(float(ages[0]), float(ages[1]))
            except ConfigError as exc:
                raise ConfigError(f"the population's age_years: {exc}") from None
        texts = [record.get(k, "") for k in ("source", "view")]
        for key, text in zip(("source", "view"), texts):
            if not isinstance(text, str) or len(text) > _TEXT_LIMIT:
                raise ConfigError(f"the population's {key} should be text of at most {_TEXT_LIMIT} characters")
        return cls(ages, texts[0].strip(), texts[1].strip())

    @classmethod
    def stated(cls, ages: str, source: str) -> Population | None:
        """The population a user stated (TrainConfig's population_age and population_source); None if neither."""
        if not isinstance(source, str) or len(source) > _TEXT_LIMIT:
            raise ConfigError(f"Where the films come from must be text of at most {_TEXT_LIMIT} characters.")
        age_years = parse_age_range(ages)
        return cls(age_years, source.strip()) if age_years or source.strip() else None


# The children of the project's built-in data (Kermany et al. 2018: "pediatric patients of one to five years
# old"): the demo model, the demo set and the lesson sets.
KERMANY_CHILDREN = Population((1, 5), "Guangzhou Women and Children's Medical Center, Kermany et al. 2018",
                              "frontal (PA/AP)")


def file_text(population: Population) -> str:
    """A dataset folder's POPULATION.json for `population` (scripts/make_*_data.py write the built-in ones)."""
    return json.dumps(population.to_record(), indent=_INDENT, ensure_ascii=False) + "\n"


def parse_age_range(text: str) -> tuple[float, float] | None:
    """'1-5' (or '1–5', '1 to 5', '0.5-5') -> (1.0, 5.0); '' -> None; ConfigError with a sentence otherwise."""
    if not isinstance(text, str):
        raise ConfigError(f"The patients' ages must be text such as 1-5, got {text!r}.")
    if not text.strip():
        return None
    m = _RANGE_RE.match(text)
    if not m:
        raise ConfigError(f"The patients' ages {text!r} are not YOUNGEST-OLDEST in years, e.g. 1-5 or 18-90.")
    try:
        return _check_range(float(m.group(1)), float(m.group(2)))
    except ConfigError as exc:
        raise ConfigError(f"The patients' ages {text!r}: {exc}.") from None


def _check_range(low: float, high: float) -> tuple[float, float]:
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high <= MAX_AGE):
        raise ConfigError(f"the youngest and oldest ages should run from 0 to {MAX_AGE} years, youngest first "
                          f"(got {low:g} and {high:g})")
    return low, high


def parse_age(value: Any) -> float:
    """A patient's age in years as a user states it (a page field, `predict --age`); ConfigError otherwise."""
    try:
        age = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        age = math.nan
    if isinstance(value, bool) or not (math.isfinite(age) and 0 <= age <= MAX_AGE):
        raise ConfigError(f"The patient's age must be a number of years from 0 to {MAX_AGE}, e.g. 40 or 0.5 "
                          f"(got {value!r:.20}).")
    return age


def age_in_completed_years(age: float) -> int:
    """The age as people say it: a child of 5 years and 11 months is 5."""
    return math.floor(age + 1e-9)  # 5.0 from a float sum a hair below it is still 5



def training_population(stated: Population | None, dataset: Population | None, parent: Population | None,
                        same_data: bool) -> Population | None:
    """What a run records: the user's statement, else its dataset folder's file, else its starting run's
    population when it trains on the same data set (a model fine-tuned on other films learnt from those), else None."""
    return stated or dataset or (parent if same_data else None)
