"""The fifth lesson's reading: one adult chest film read by a model that learnt from children, three ways.

First as a picture alone (no age known: what a PNG upload without a stated age gets), then with the age its DICOM
header says (or the user states): the population check; then its in-domain distance against the validation
images' distances, which a staged domain record keeps. Every number comes from `result.assess`. Data only:
views/adult_lesson words it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrdemo.diagnosis.predict import LoadedModel, Radiograph
from cxrdemo.diagnosis.result import ImageResult, assess

SAMPLE_FILE = "RG1_UNCR.dcm"  # pydicom-data's computed radiograph of an adult chest, PA, as acquired


def sample_film() -> Path | None:
    """pydicom-data's adult chest film (`pip install pydicom-data`), or None when the package is not installed."""
    try:
        import data_store  # pydicom-data's import name
    except ImportError:
        return None
    path = Path(data_store.__file__).parent / "data" / SAMPLE_FILE
    return path if path.is_file() else None


@dataclass(frozen=True)
class AdultReading:
    """One film read twice by one model, and where its in-domain score sits among the validation images'."""

    pixels_only: ImageResult  # no age known: the pixels and the pixel checks alone
    with_age: ImageResult  # the header's age (else the stated one) checked against the model's population
    val_scores: np.ndarray | None  # the validation images' in-domain scores the record keeps (None: not kept)

    @property
    def farther_than(self) -> float | None:
        """Share of the kept validation scores below this film's score (None without them or without a score)."""
        s = self.with_age.domain_score
        if self.val_scores is None or not len(self.val_scores) or s is None:
            return None
        return float(np.mean(self.val_scores < s))


def read_adult_film(model: LoadedModel, rad: Radiograph, stated_age: float | None = None) -> AdultReading:
    """Both readings of `rad` by `model` (each the one result `assess` makes) and the record's validation scores."""
    no_age = dataclasses.replace(rad, meta=dataclasses.replace(rad.meta, age_years=None))
    kept = getattr(model.domain, "val_scores", None)  # only a staged record keeps them
    return AdultReading(assess(model, no_age), assess(model, rad, stated_age=stated_age),
                        None if kept is None else np.asarray(kept, dtype=np.float64))
