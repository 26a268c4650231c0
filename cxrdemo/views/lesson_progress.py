"""Which of a lesson's runs the page shows, and what went wrong with its latest start, in words.

A teacher never loses a result: a recipe's result is its latest *completed* run, so restarting a lesson replaces a
row only when the new run finishes; a restart that is cancelled, fails or is interrupted is reported beside the
earlier results (`problem_words`), never instead of them.
"""

from __future__ import annotations

from cxrdemo.runs import lifecycle
from cxrdemo.runs import store as runs
from cxrdemo.views.lessons import Lesson, lesson_runs, recipe_key, recipes
from cxrdemo.views.text import escape_markdown


def finished_runs(lesson: Lesson, infos: list[runs.RunInfo]) -> list[runs.RunInfo]:
    """Each recipe's latest completed run (oldest first): what the result view reads."""
    done = [i for i in infos if i.state == "completed" and recipe_key(i, lesson) is not None]
    return list(lesson_runs(lesson, done).values())


def replaced_rows(lesson: Lesson, infos: list[runs.RunInfo]) -> tuple[int, int]:
    """(rows already from the start still training, rows shown): a restart replaces rows one by one."""
    latest, shown = lesson_runs(lesson, infos), lesson_runs(lesson, finished_runs(lesson, infos))
    if not any(i.state in lifecycle.ACTIVE for i in latest.values()):
        return 0, len(shown)
    return sum(latest[k].run_id == i.run_id for k, i in shown.items()), len(shown)


def problems(lesson: Lesson, infos: list[runs.RunInfo]) -> dict[str, list[runs.RunInfo]]:
    """The latest start's runs that ended without a result, by state (cancelled, failed, interrupted, damaged)."""
    out: dict[str, list[runs.RunInfo]] = {}
    for info in lesson_runs(lesson, infos).values():
        if info.state not in lifecycle.ACTIVE + ("completed",):
            out.setdefault(info.state, []).append(info)
    return out


def problem_words(lesson: Lesson, infos: list[runs.RunInfo]) -> str | None:
    """What went wrong with the latest start, and what the page still shows (None when nothing went wrong)."""
    found = problems(lesson, infos)
    if not found:
        return None
    parts = ", ".join(f"{len(v)} {state}" for state, v in found.items())
    reasons = sorted({str(i.status.get("error") or i.damaged or "").strip() for v in found.values() for i in v} - {""})
    why = f" ({escape_markdown(reasons[0])})" if len(reasons) == 1 else ""
    kept = finished_runs(lesson, infos)
    still = (f" The results below are from your earlier finished runs ({len(kept)} of {len(recipes(lesson))} "
             "recipes)." if kept else "")
    return (f"The latest start of this lesson did not finish: {parts} run(s){why}.{still} Start the lesson again "
            "to repeat them.")


def result_record(lesson: Lesson, infos: list[runs.RunInfo], shipped: list[runs.RunInfo]) -> dict:
    """One lesson's headline and its effect as data, from this machine's finished runs when there are any, else
    from the shipped examples (`python -m cxrdemo lessons results`)."""
    from cxrdemo.views import lesson_results  # plotly and pandas: only when results are read

    mine = finished_runs(lesson, infos)
    source, chosen = ("this machine", mine) if mine else ("shipped examples", finished_runs(lesson, shipped))
    return _record(lesson.key, lesson.title, source, lesson_results.lesson_result(lesson, chosen) if chosen else None)


def reading_record(key: str, title: str, result) -> dict:
    """A reading lesson's record (no runs: its result is read from a stored evaluation), as `result_record`."""
    return _record(key, title, "stored evaluation", result)


def _record(key: str, title: str, source: str, result) -> dict:
    """key, title, source, headline, effect, ci95, effect_what; unrounded, so that a number printed from the record
    reads as the headline's own (a 4-digit rounding once printed +16.7 points beside a headline's +16.6)."""
    e = result.effect if result is not None else None
    return {"key": key, "title": title, "source": source if result is not None else None,
            "headline": result.headline if result is not None else None,
            "effect": e.value if e else None, "ci95": [e.low, e.high] if e else None,
            "effect_what": e.what if e else None}
