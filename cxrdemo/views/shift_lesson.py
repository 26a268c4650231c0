"""The lesson "The promise under shift": a reading lesson, no training job. The demo model's prediction sets promise
90% coverage, a promise fitted on its validation films; its stored evaluations (evaluation.json, made by
`python -m cxrdemo demo-model`) show it on films drawn like them and on films from another acquisition period.

Every number comes from the demo model's own evaluation record; the intervals are exact (Clopper-Pearson) on the
count of films whose true class the conformal set held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from cxrdemo import paths
from cxrdemo.model.metrics import exact_interval
from cxrdemo.runs import store as runs
from cxrdemo.views import numbers
from cxrdemo.views.lesson_results import Effect, LessonResult
from cxrdemo.views.model_card import EVALUATION_FILE
from cxrdemo.views.plots import THRESHOLD_COLOUR

KEY = "shift"
TITLE = "The promise under shift"
LEVEL = 0.90  # the promise the lesson is about; the 95% sets are shown beside it

NARRATIVE = (
    "A prediction set is the model's honest answer when it is unsure: *NORMAL*, *PNEUMONIA*, or *both*. The demo "
    "model's sets come with a promise - **they hold the true class for 90% of films** - and the promise is made on "
    "its validation films (split-conformal prediction). Nothing is trained in this lesson: we read what the demo "
    "model's own evaluation recorded on two sets of films it never learnt from. One set is drawn like the "
    "validation films (*in-distribution*); the other comes from a different acquisition period of the same hospital "
    "(*shifted*): the same children's disease, slightly different pictures.")

LOOK_FOR = (
    "On films drawn like the validation films, is the coverage compatible with 90%? Read the interval, not just "
    "the number.",
    "On the shifted films the coverage falls below the promise, and its interval no longer reaches 90%: the "
    "promise was about films like the validation films, and only about them.",
    "The sets the app shows hold up better: where the conformal set is empty or the film looks unlike the training "
    "films, Diagnosis answers 'both'. That is a safety net, not a new promise.",
    "At 95% the sets are larger: see whether that promise survived the shift on these films.",
)


@dataclass(frozen=True)
class Coverage:
    """One evaluation set at one promised level: how many films, and how many the conformal set covered."""

    data: str
    label: str  # "in-distribution" or "shifted"
    n: int
    level: float
    covered: int  # films whose conformal set held the true class
    shown: float  # coverage of the sets the app shows (the 'both' fallback included)
    share_both: float

    @property
    def coverage(self) -> float:
        return self.covered / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """Exact 95% interval of the coverage (Clopper-Pearson on the count)."""
        return exact_interval(self.covered, self.n)


def read_coverage(run_dir: str | Path | None = None) -> list[Coverage]:
    """The demo model's stored coverage per evaluation set and level ([] when it has no evaluation record)."""
    path = Path(run_dir or paths.demo_run_dir()) / EVALUATION_FILE
    if not path.is_file():
        return []
    out = []
    for ev in runs.read_json(path).get("evaluations") or []:
        for c in ev.get("coverage") or []:
            n, conformal = int(c.get("n") or 0), c.get("conformal_coverage")
            if not n or conformal is None:
                continue
            out.append(Coverage(str(ev.get("data", "")), str(ev.get("label", "")), n, float(c["level"]),
                                round(float(conformal) * n), float(c.get("coverage", math.nan)),
                                float(c.get("share_both", math.nan))))
    return out


def kept_words(c: Coverage) -> str:
    """Whether the interval of the coverage reaches the promised level."""
    lo, hi = c.interval
    if hi < c.level:
        return f"below the promised {numbers.percent(c.level)}: the promise is broken"
    if lo > c.level:
        return f"above the promised {numbers.percent(c.level)}: kept"
    return f"compatible with the promised {numbers.percent(c.level)}: kept as far as {c.n} films can tell"


def _table(rows: list[Coverage]) -> pd.DataFrame:
    return pd.DataFrame([{"evaluation set": f"{c.data} ({c.label})", "promised coverage": c.level, "films": c.n,
                          "coverage (conformal sets)": c.coverage, "95% interval low": c.interval[0],
                          "95% interval high": c.interval[1], "coverage (sets shown)": c.shown,
                          "share answering both": c.share_both} for c in rows])


def _figure(rows: list[Coverage]) -> go.Figure:
    fig = go.Figure()
    for level in sorted({c.level for c in rows}):
        part = [c for c in rows if c.level == level]
        fig.add_trace(go.Bar(
            name=f"promised {numbers.percent(level)}", x=[f"{c.data}<br>({c.label}, {c.n} films)" for c in part],
            y=[c.coverage for c in part], text=[numbers.percent(c.coverage) for c in part], textposition="inside",
            error_y={"type": "data", "symmetric": False, "array": [c.interval[1] - c.coverage for c in part],
                     "arrayminus": [c.coverage - c.interval[0] for c in part]}))
    fig.add_hline(y=LEVEL, line_dash="dash", line_color=THRESHOLD_COLOUR,
                  annotation_text=f"the promise: {numbers.percent(LEVEL)}", annotation_position="bottom right")
    fig.update_layout(barmode="group", title="Conformal sets holding the true class (bars: 95% interval)",
                      yaxis={"range": [0.5, 1.02], "tickformat": ".0%", "title": "Coverage"}, height=420,
                      margin={"l": 70, "r": 20, "t": 60, "b": 100},
                      legend={"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0})
    return fig


def shift_result(rows: list[Coverage] | None = None) -> LessonResult | None:
    """Headline, table, figure and effect (shifted coverage minus the promise) of the lesson; None without records."""
    rows = read_coverage() if rows is None else rows
    at = [c for c in rows if abs(c.level - LEVEL) < 1e-9]
    inside = next((c for c in at if c.label != "shifted"), None)
    shifted = next((c for c in at if c.label == "shifted"), None)
    if shifted is None:
        return None
    lo, hi = shifted.interval
    effect = Effect(f"conformal-set coverage on shifted films ({shifted.data}) minus the promised "
                    f"{numbers.percent(LEVEL)}", shifted.coverage - LEVEL, lo - LEVEL, hi - LEVEL)
    parts = [f"Promised on validation: {numbers.percent(LEVEL)} of films have their true class in the set."]
    if inside is not None:
        parts.append(f"On {inside.n} in-distribution films ({inside.data}): {numbers.percent(inside.coverage)} "
                     f"(95% interval {numbers.interval('accuracy', *inside.interval)}; {kept_words(inside)}).")
    parts.append(f"On {shifted.n} shifted films ({shifted.data}): {numbers.percent(shifted.coverage)} (95% interval "
                 f"{numbers.interval('accuracy', lo, hi)}; {kept_words(shifted)}), "
                 f"{numbers.points(effect.value)} against the promise "
                 f"({numbers.difference_interval('accuracy', effect.low, effect.high)}).")
    parts.append(f"The sets the app shows, which answer 'both' when unsure or out of domain, held "
                 f"{numbers.percent(shifted.shown)} on the shifted films.")
    return LessonResult(" ".join(parts), _table(rows), [_figure(rows)], effect=effect)
