"""Lessons: one button queues a guided experiment's runs; its result view appears when they finish."""

from __future__ import annotations

import streamlit as st

from cxrdemo.runs import examples, jobs
from cxrdemo.views import lesson_results, lessons
from cxrdemo.views.text import escape_markdown
from cxrdemo.views.trainer import format_duration
from pages import ui

root = ui.runs_dir()
st.title("Lessons")
ui.notice()
st.markdown("Each lesson queues ordinary training runs (the Trainer and Compare pages show them; cancel works "
            "there) and, when they finish, shows a result view made for that lesson.")


@st.cache_data(show_spinner=False)
def estimate(key: str, tiny: str) -> float:
    """The lesson's estimated wall time (cached: it scans the lesson's images)."""
    return lessons.estimate_seconds(lessons.LESSONS[key])


def show_lesson(lesson: lessons.Lesson) -> None:
    """Narrative, start button, progress, result view and what to look for, for one lesson."""
    st.markdown(lesson.narrative)
    plan = lessons.recipes(lesson)
    c = plan[0].config
    with ui.friendly_errors("Estimating the time"):
        st.caption(f"{len(plan)} runs at {c.img_size} px, {c.epochs} epochs each; estimated time at one job at a "
                   f"time on 2 CPU cores: about {format_duration(estimate(lesson.key, str(c.img_size)))} "
                   "(an estimate).")
    counts = lessons.progress(lesson, jobs.list_jobs(root))
    if st.button(f"Start “{lesson.title}”", key=f"start-{lesson.key}", disabled=counts["active"] > 0):
        with ui.friendly_errors("Starting the lesson"):
            ids = lessons.start(lesson, root)
            st.success(f"Queued {len(ids)} runs.")
            st.rerun()
    watch(lesson)
    st.markdown("**What to look for**\n\n" + "\n".join(f"- {p}" for p in lesson.look_for))


@st.fragment(run_every=3)
def watch(lesson: lessons.Lesson) -> None:
    """Progress while the lesson's runs train; its result view once any has finished."""
    infos = jobs.list_jobs(root)
    counts = lessons.progress(lesson, infos)
    if counts["active"]:
        st.progress(counts["completed"] / counts["planned"],
                    text=f"{counts['completed']} of {counts['planned']} runs finished, {counts['active']} waiting "
                         "or training.")
    if counts["other"]:
        st.warning(f"{counts['other']} run(s) of this lesson failed, were cancelled or interrupted: start the "
                   "lesson again to repeat them.")
    if not counts["completed"]:
        shipped = examples.list_examples()
        if counts["active"] or not lessons.progress(lesson, shipped)["completed"]:
            if not counts["active"]:
                st.info("Not run yet: press the button to start it.")
            return
        st.info("Example results, shipped with the project (read-only): press the button to run it yourself.")
        infos = shipped
    with ui.friendly_errors("Showing the results"):
        result = lesson_results.lesson_result(lesson, infos)
        st.markdown(f"**Result.** {escape_markdown(result.headline)}")
        st.dataframe(result.table, hide_index=True)
        for i, fig in enumerate(result.figures):
            st.plotly_chart(fig, key=f"fig-{lesson.key}-{i}")
        # Hook: the probe timelapse and error gallery of result.gallery_runs go here once runs write them.


tabs = st.tabs([lesson.title for lesson in lessons.LESSONS.values()])
for tab, lesson in zip(tabs, lessons.LESSONS.values()):
    with tab:
        show_lesson(lesson)
