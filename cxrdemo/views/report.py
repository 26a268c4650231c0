"""A report to keep: the worklist's films as a PDF (views/report_pdf draws it), every word and number from here.

A summary table first, then a page per film: the image and its heatmap overlay, the verdict, the calibrated
probabilities with the threshold, the prediction sets, every check with its sentence, the faithfulness reading,
the user's mark and its pointing scores when there is one. The model's population, its headline numbers and its
intended use come first; "Research and teaching demo — not for clinical use" is on every page. From a DICOM header
only the view, the age and the sex are shown; the file name names each film.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from cxrdemo.diagnosis import explain
from cxrdemo.diagnosis.cam_cost import SLOW_METHODS
from cxrdemo.diagnosis import faithfulness as faith
from cxrdemo.diagnosis.predict import LoadedModel, model_summary
from cxrdemo.diagnosis.pointing import Box, Mark
from cxrdemo.diagnosis.worklist import Film
from cxrdemo.views import diagnosis as dv
from cxrdemo.views import numbers
from cxrdemo.views import worklist as wv
from cxrdemo.views.heatmaps import faithfulness_reading
from cxrdemo.views.model_card import intended_use
from cxrdemo.views.population import age_words, population_line, population_reason

NOT_CLINICAL = "Research and teaching demo — not for clinical use"
FAST_SECONDS_PER_FILM = 3  # faithfulness (ROAD against 5 random maps) on 2 cores: benchmarks/bench_worklist.py
SEX_WORDS = {"M": "male", "F": "female"}


def plain(text: str) -> str:
    """Markdown from views/ as plain text for the PDF: bold marks and backslash escapes removed."""
    return re.sub(r"\\(.)", r"\1", str(text).replace("**", ""))


@dataclass(frozen=True)
class FilmPage:
    """What one film's page shows: its title, its pictures, and (heading, text) sections."""

    title: str
    image: np.ndarray  # grey [0, 1], the display copy
    overlay: np.ndarray  # HxWx3 uint8, the heatmap over the image
    overlay_caption: str
    sections: list[tuple[str, str]]
    box: Box | None  # the user's mark


@dataclass(frozen=True)
class Report:
    """The whole document as data: the front matter, the summary table, the films' pages and the unread files."""

    title: str
    front: list[tuple[str, str]]
    summary: list[list[str]]  # header row first
    unread: list[tuple[str, str]]  # (file, the reader's sentence)
    pages: list[FilmPage]
    footer: str


def header_words(film: Film) -> str:
    """How the file was read and the three header facts a report may show: view, age and sex (never a name,
    an ID or a date)."""
    m = film.result.meta
    text = f"Read as {m.format.upper()}, {m.width} × {m.height} px, {m.bits}-bit."
    facts = [f"view {m.view}" if m.view else "",
             f"age {age_words(m.age_years)}" if m.age_years is not None else "",
             f"sex {SEX_WORDS.get(m.sex, m.sex)}" if m.sex else ""]
    facts = [f for f in facts if f]
    return text + (f" DICOM header: {', '.join(facts)}." if facts else "")


def probability_words(model: LoadedModel, film: Film) -> str:
    """'NORMAL 12.3%, PNEUMONIA 87.7% (calibrated). Says PNEUMONIA when p(PNEUMONIA) is at least 8.8%, ...'"""
    r = film.result
    probs = ", ".join(f"{c} {numbers.percent(p)}" for c, p in zip(r.classes, r.probs))
    scale = "calibrated" if r.calibrated else "not calibrated: scores, not risks"
    return f"{probs} ({scale}). {dv.decision_line(model)[0]}"


def set_words_all(model: LoadedModel, film: Film, level: float) -> str:
    """The chosen coverage's set sentence, then every coverage's set: '... At 90%: {PNEUMONIA}; at 95%: both.'"""
    r = film.result
    every = "; ".join(f"at {numbers.level(lv)}: {dv.set_words(r, lv)}" for lv in sorted(r.sets))
    return f"{plain(dv.set_sentence(r, level, model.run_id))} {every[0].upper()}{every[1:]}."


def check_sections(model: LoadedModel, film: Film) -> list[tuple[str, str]]:
    """Every check with its sentence: the chest-film check, the in-domain check, the population check."""
    r = film.result
    quality = "Passed: it looks like a chest radiograph." if r.looks_like_cxr else (r.quality_warning or "Failed.")
    domain = dv.domain_words(model, r) or "This model has no in-domain check."
    pop = population_reason(r.population) if r.population is not None else "Not checked."
    return [("Chest-film check", quality), ("In-domain check", domain), ("Population check", pop)]


def film_page(model: LoadedModel, film: Film, heat: explain.Heatmap, level: float,
              reading: faith.Faithfulness | None, mark: Mark | None, faithfulness_asked: bool) -> FilmPage:
    """One film's page as data (its pictures come from the display copy kept by the worklist)."""
    r = film.result
    grey = film.grey()
    faith_text = (faithfulness_reading(reading) if reading is not None else
                  "Not computed for this report" + ("." if faithfulness_asked else
                                                     f" (ask for it: --faithfulness, about {FAST_SECONDS_PER_FILM} s "
                                                     "per film)."))
    sections = [("File", header_words(film)),
                ("Verdict", plain(dv.decision_sentence(model, r))),
                ("Calibrated probabilities", probability_words(model, film)),
                ("Prediction set", set_words_all(model, film, level)),
                *check_sections(model, film),
                ("Faithfulness of the heatmap", faith_text),
                ("Your mark", wv.mark_words(mark, heat.method) if mark is not None else "No mark drawn.")]
    caption = dv.heatmap_caption(heat.method, r.classes, r.probs, r.predicted, heat.target, heat.class_specific)
    return FilmPage(film.name, grey, explain.overlay(grey, heat.cam, 0.4), caption, sections,
                    None if mark is None else mark.box)


def front_matter(model: LoadedModel, label: str) -> list[tuple[str, str]]:
    """The model's sections: what it is, whom it learnt from, how good it is, what it is for."""
    out = [("Model", f"{label}. {' '.join(dv.decision_line(model))}"),
           ("Whom it learnt from", population_line(model.population))]
    for h in model_summary(model)["headlines"]:
        cells = "; ".join(f"{name} {value}" for name, value in dv.headline_cells(h, list(model.classes)))
        out.append((dv.headline_title(h), cells or "No numbers recorded."))
    out.append(("Intended use and limits", plain(intended_use(model.path))))
    return out


def summary_rows(films: list[Film], level: float, marks: Mapping[str, Mark] | None) -> list[list[str]]:
    """The summary table (header first): the worklist's own cells, without thumbnails."""
    df = wv.table(films, level, marks, thumbnails=False)
    return [list(df.columns), *([str(v) for v in row] for row in df.itertuples(index=False))]


def file_name(film_name: str | None = None) -> str:
    """The PDF's download name: what it is and that it is not for clinical use."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(film_name)).stem).strip("-")[:60] if film_name else ""
    return f"cxrdemo-report-{stem or 'worklist'}-NOT-FOR-CLINICAL-USE.pdf"


def report_method(method: str) -> str:
    """The heatmap method a report of many films uses: the one chosen, unless it takes tens of seconds per film."""
    return "GradCAM" if method in SLOW_METHODS else method


Progress = Callable[[int, int, str], None]  # (films done, films in all, the film's name)


def build(model: LoadedModel, films: list[Film], *, label: str, method: str = "GradCAM", level: float = 0.90,
          faithfulness: bool = False, marks: Mapping[str, Mark] | None = None,
          heatmaps: Mapping[str, explain.Heatmap] | None = None, progress: Progress | None = None,
          threads: int | None = None) -> Report:
    """The report of `films` (in the worklist's order: those that need a look first): each film's heatmap by
    `method` (or the one in `heatmaps`, by digest: the map on screen), and its faithfulness only when asked
    (about FAST_SECONDS_PER_FILM s each)."""
    explain.method_class(method)
    shown = wv.ordered(films)
    readable = [f for f in shown if f.result is not None and f.display is not None]
    pages = []
    for i, f in enumerate(readable):
        with faith.torch_threads(threads):  # the caller's choice: see diagnosis/worklist
            heat = (heatmaps or {}).get(f.digest) or explain.heatmap(model, f.result, method)
            reading = faith.measure(model, f.result, heat) if faithfulness else None
        pages.append(film_page(model, f, heat, level, reading, (marks or {}).get(f.digest), faithfulness))
        if progress is not None:
            progress(i + 1, len(readable), f.name)
    n = len(readable)
    title = f"cxrdemo report: {n} film{'' if n == 1 else 's'}, model {label}"
    made = time.strftime("%Y-%m-%d %H:%M")
    return Report(title=title, front=[("Made", f"{made} by cxrdemo. {wv.summary(shown)}"),
                                      *front_matter(model, label)],
                  summary=summary_rows(shown, level, marks),
                  unread=[(f.name, f.error or "") for f in shown if f.result is None],
                  pages=pages, footer=NOT_CLINICAL)
