"""The worklist as a table: one row per file, the films that need a look first; CSV and JSON exports.

Every cell is read off the film's one ImageResult; numbers are written by views/numbers, the set by
views/diagnosis.set_words, the checks' sentences by views/checks and views/population.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Mapping

import numpy as np
import pandas as pd

from cxrdemo.diagnosis.pointing import Mark
from cxrdemo.diagnosis.result import OUTSIDE_DOMAIN, OUTSIDE_POPULATION, OUTSIDE_QUALITY
from cxrdemo.diagnosis.worklist import MAX_FILMS, Film
from cxrdemo.views import numbers
from cxrdemo.views.diagnosis import DEFAULT_LEVEL, set_words
from cxrdemo.views.population import population_reason
from cxrdemo.views.text import safe_csv_cell

THUMB, FILE, VERDICT, SET, QUALITY, DOMAIN, POPULATION, LOOK, MARK = (
    "Film", "File", "Verdict", "Set", "Chest film?", "Like the training films?", "In the population?",
    "Needs a look", "Your mark")
LOOK_WORDS = {"doubtful": "can't tell (both)", OUTSIDE_POPULATION: "outside the model's population",
              OUTSIDE_DOMAIN: "unlike the training films", OUTSIDE_QUALITY: "may not be a chest film",
              "unreadable": "could not be read"}


def p_label(classes: tuple[str, ...] | list[str]) -> str:
    """The probability column's title: p of the class the threshold reads for two classes, else the verdict's."""
    return f"p({classes[1]})" if len(classes) == 2 else "p (verdict)"


def p_shown(film: Film) -> float | None:
    """The calibrated probability the table shows for a film (None when unreadable)."""
    r = film.result
    if r is None:
        return None
    return float(r.probs[1]) if len(r.classes) == 2 else r.p


def look_reasons(film: Film) -> list[str]:
    """Why a film needs a look, in a few words each (none for a film the model reads without doubt)."""
    r = film.result
    if r is None:
        return [LOOK_WORDS["unreadable"]]
    out = [LOOK_WORDS[r.outside]] if r.outside else []
    return out + ([LOOK_WORDS["doubtful"]] if r.doubtful and not r.outside else [])


def _rank(film: Film) -> int:
    """0: flagged or doubtful, 1: unreadable, 2: the rest."""
    return 0 if film.needs_look else (1 if film.result is None else 2)


ORDERS = ("Needs a look first", "File name", "Highest probability first", "As given")


def ordered(films: list[Film], order: str = ORDERS[0]) -> list[Film]:
    """The films in a chosen order (ORDERS); the first keeps the flagged and doubtful films on top."""
    if order == "File name":
        return sorted(films, key=lambda f: (f.name.lower(), f.index))
    if order == "Highest probability first":
        return sorted(films, key=lambda f: (p_shown(f) is None, -(p_shown(f) or 0.0), f.index))
    if order == "As given":
        return sorted(films, key=lambda f: f.index)
    return sorted(films, key=lambda f: (_rank(f), f.index))


def _check_cells(film: Film) -> tuple[str, str, str]:
    r = film.result
    if r is None:
        return numbers.MISSING, numbers.MISSING, numbers.MISSING
    quality = "yes" if r.looks_like_cxr else "check it"
    domain = numbers.MISSING if r.in_domain is None else ("yes" if r.in_domain else "no")
    pop = r.population
    population = (numbers.MISSING if pop is None or pop.in_population is None else
                  "yes" if pop.in_population else "no")
    return quality, domain, population


def mark_words(mark: Mark, method: str | None = None) -> str:
    """'GradCAM: 42.0% of the map in your box (an even spread: 12.0%), peak inside' for each method scored."""
    methods = [method] if method in mark.energy else list(mark.energy)
    even = numbers.percent(mark.area)
    parts = [f"{m}: {numbers.percent(mark.energy[m])} of the map in your box (an even spread: {even})"
             + ("" if m not in mark.peak_inside else ", peak inside" if mark.peak_inside[m] else ", peak outside")
             for m in methods]
    return "; ".join(parts) or f"a box covering {even} of the image, not scored"


def thumbnail_url(film: Film) -> str | None:
    """The film's thumbnail as a PNG data URL for an image column (None when unreadable)."""
    from PIL import Image

    if film.thumbnail is None:
        return None
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(film.thumbnail)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def table(films: list[Film], level: float = DEFAULT_LEVEL, marks: Mapping[str, Mark] | None = None,
          thumbnails: bool = True) -> pd.DataFrame:
    """The rows the page shows, in the order of `films`: every cell text, numbers by views/numbers."""
    classes = next((f.result.classes for f in films if f.result is not None), ("",))
    rows = []
    for f in films:
        r = f.result
        quality, domain, population = _check_cells(f)
        row = {FILE: f.name,
               LOOK: ", ".join(look_reasons(f)) if (f.needs_look or r is None) else "",  # in view without scrolling
               VERDICT: numbers.MISSING if r is None else r.classes[r.predicted],
               p_label(classes): numbers.percent(p_shown(f)),
               f"{SET} ({numbers.level(level)})": numbers.MISSING if r is None else set_words(r, level),
               QUALITY: quality, DOMAIN: domain, POPULATION: population}
        if thumbnails:
            row = {THUMB: thumbnail_url(f), **row}
        if marks:
            row[MARK] = mark_words(marks[f.digest]) if f.digest in marks else ""
        rows.append(row)
    return pd.DataFrame(rows)


def summary(films: list[Film], total: int | None = None) -> str:
    """'20 films read: 3 need a look, 1 could not be read' (+ how many were left out beyond the limit)."""
    read = sum(f.result is not None for f in films)
    look = sum(f.needs_look for f in films)
    bad = len(films) - read
    text = f"{read} film{'' if read == 1 else 's'} read: {look} need{'s' if look == 1 else ''} a look"
    text += f", {bad} could not be read" if bad else ""
    left = (total or 0) - len(films)
    if left > 0:
        text += f"; the {left} files beyond the first {MAX_FILMS} were left out (split the folder)"
    return text + "."


# ---------------------------------------------------------------- exports

def records(films: list[Film], marks: Mapping[str, Mark] | None = None) -> list[dict]:
    """One plain dict per film for the exports: numbers rounded (CSV_DIGITS), the checks' sentences, the mark."""
    out = []
    digits = numbers.CSV_DIGITS
    for f in films:
        r = f.result
        row: dict = {"file": f.name, "sha256": f.digest, "needs_look": f.needs_look,
                     "why": "; ".join(look_reasons(f)) if (f.needs_look or r is None) else "", "error": f.error}
        if r is not None:
            row.update({"verdict": r.classes[r.predicted], "calibrated": r.calibrated,
                        **{f"p_{c}": round(float(p), digits) for c, p in zip(r.classes, r.probs)},
                        "threshold": None if r.threshold is None else round(float(r.threshold), digits),
                        **{f"set_{round(lv * 100)}": r.set_names(lv) for lv in sorted(r.sets)},
                        "looks_like_cxr": r.looks_like_cxr, "quality_warning": r.quality_warning,
                        "in_domain": r.in_domain,
                        "domain_score": None if r.domain_score is None else round(r.domain_score, digits),
                        "in_population": None if r.population is None else r.population.in_population,
                        "population_reason": None if r.population is None else population_reason(r.population),
                        "outside": r.outside})
        mark = (marks or {}).get(f.digest)
        if mark is not None:
            row["mark_box"] = [round(v, digits) for v in mark.box.corners]
            row["mark_area"] = round(mark.area, digits)
            row.update({f"mark_energy_{m}": round(float(v), digits) for m, v in mark.energy.items()})
            row.update({f"mark_peak_inside_{m}": bool(v) for m, v in mark.peak_inside.items()})
        out.append(row)
    return out


def to_json(films: list[Film], marks: Mapping[str, Mark] | None = None) -> str:
    """The worklist as JSON text (a list of records)."""
    return json.dumps(records(films, marks), indent=1, ensure_ascii=False)


def to_csv(films: list[Film], marks: Mapping[str, Mark] | None = None) -> bytes:
    """The worklist as CSV bytes (UTF-8); lists joined by '|', every text cell safe for spreadsheets."""
    rows = [{k: safe_csv_cell("|".join(v) if isinstance(v, list) and all(isinstance(x, str) for x in v)
                              else " ".join(map(str, v)) if isinstance(v, list) else v)
             for k, v in rec.items()} for rec in records(films, marks)]
    return pd.DataFrame(rows).to_csv(index=False).encode("utf-8")


# ---------------------------------------------------------------- the page's words

MODES = ("One film", "Several films (a worklist)")
UPLOAD_KINDS = ("Files", "A folder")
UPLOAD_LABEL = {"Files": "Upload chest radiographs (PNG, JPEG or DICOM), several at once",
                "A folder": "Upload a folder of chest radiographs"}
UPLOAD_HELP = ("The files stay in this app's memory; they are never saved to disk. Each is read once, then only a "
               "small copy is kept. DICOM files are read for their pixels, view, age and sex only.")
EXAMPLE_LABEL = "Use the built-in example worklist (20 test films the demo model never saw)"
EMPTY = "Upload several films or a folder, or use the built-in example worklist."
TABLE_HELP = "Click a row to open that film below, with its heatmap."
NO_FOLDER = "This Streamlit version cannot upload a folder: select the files instead."


def progress_text(done: int, total: int, film: Film) -> str:
    """'12 of 50 read: person1.jpg — PNEUMONIA' while the verdicts arrive."""
    r = film.result
    what = "could not be read" if r is None else r.classes[r.predicted]
    return f"{done} of {total} read: {film.name} — {what}"


def report_note(chosen: str, used: str) -> str:
    """What the worklist's PDF holds, said before it is made."""
    slow = f" ({chosen} would take tens of seconds per film)" if used != chosen else ""
    return (f"The report has a page per film with its {used} heatmap{slow}; the faithfulness of each heatmap is "
            "measured only in a one-film report (about 3 s per film): open a film below to get it.")
