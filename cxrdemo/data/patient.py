"""The patient's age and sex from a DICOM header: the only patient facts the app may show.

The age comes from PatientAge (0010,1010), else it is computed in memory from PatientBirthDate and the
study date (StudyDate, else AcquisitionDate, else SeriesDate). Dates never leave this module: no date is
returned, stored, shown or logged, and the notes name no date. A header that cannot give an age gives None
with a note (a birth date after the study, an age over 130, an unreadable value), never an error.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from cxrdemo.population import MAX_AGE

# DICOM's Age String (AS) is nnnD, nnnW, nnnM or nnnY; writers also leave out the zeros or the unit (years).
_AGE_RE = re.compile(r"^\s*([0-9]{1,3})\s*([DWMY]?)\s*$", re.I)
_DAYS_PER_YEAR = 365.25
_PER_UNIT = {"D": 1 / _DAYS_PER_YEAR, "W": 7 / _DAYS_PER_YEAR, "M": 1 / 12, "Y": 1.0, "": 1.0}
_STUDY_DATES = ("StudyDate", "AcquisitionDate", "SeriesDate")


def parse_age_string(text: str) -> float | None:
    """'055Y' -> 55.0, '006M' -> 0.5, '012W' -> 0.23, '003D' -> 0.0082 (years); None when it is not an age."""
    m = _AGE_RE.match(text or "")
    return int(m.group(1)) * _PER_UNIT[m.group(2).upper()] if m else None


def _date(value: Any) -> dt.date | None:
    """A DICOM DA value (YYYYMMDD, or the old YYYY.MM.DD) as a date; None when absent or unreadable."""
    text = str(value or "").strip().replace(".", "")
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date() if len(text) == 8 else None
    except ValueError:
        return None


def age_from_dates(birth: Any, study: Any) -> float | None:
    """Years between two DICOM dates, to about four days (never the dates themselves); None if either is unreadable;
    negative when the birth date is after the study date."""
    b, s = _date(birth), _date(study)
    if b is None or s is None:
        return None
    days = (s - b).days
    return round(days / _DAYS_PER_YEAR, 2) if days >= 0 else days / _DAYS_PER_YEAR  # a day before stays negative


def age_and_sex(ds: Any) -> tuple[float | None, str, list[str]]:
    """(age in years or None, sex 'M' | 'F' | '', notes) from a pydicom dataset's patient module."""
    notes: list[str] = []
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    sex = sex if sex in ("M", "F") else ""
    age = None
    text = str(ds.get("PatientAge", "") or "").strip()
    if text:
        age = parse_age_string(text)
        if age is None:
            notes.append("the header's patient age is not a DICOM age (such as 055Y): not used")
    if age is None and ds.get("PatientBirthDate"):
        study = next((ds.get(k) for k in _STUDY_DATES if ds.get(k)), None)
        age = age_from_dates(ds.get("PatientBirthDate"), study)
        if age is not None and age < 0:
            notes.append("the header's birth date is after its study date: no age taken from them")
            age = None
    if age is not None and age > MAX_AGE:
        notes.append(f"the header gives an age of {age:.0f} years, over {MAX_AGE}: not used")
        age = None
    return age, sex, notes
