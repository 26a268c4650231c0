"""Lessons: one button queues a guided experiment's runs; its result view appears when they finish. Until a lesson
has run here, the example results shipped with the project stand in, labelled as such."""

from __future__ import annotations

import streamlit as st

from cxrdemo import paths
from cxrdemo.runs import examples, jobs
from cxrdemo.views import adult_lesson, lesson_progress, lesson_results, lessons, shift_lesson
from cxrdemo.views.text import escape_markdown
from app_pages import adult_lesson_ui, shift_lesson_ui, ui

root = ui.runs_dir()
st.title("Lessons")
ui.notice()
policy = ui.classroom()
st.markdown("Each lesson queues ordinary training runs (the Trainer and Compare pages show them; cancel works "
            "here and there) and, when they finish, shows a result view made for that lesson.")


@st.cache_data(show_spinner=False, ttl=600)
def estimate(key: str, tiny: str, shipped_from: str, store: str, finished: int) -> lessons.Estimate:
    """The lesson's estimated wall time (cached: it scans the lesson's images and the example runs; made again when
    a run of the store finishes, whose speed it reads)."""
    return lessons.estimate(lessons.LESSONS[key], runs_dir=store)


def show_lesson(lesson: lessons.Lesson) -> None:
    """Narrative, how long it takes, start button, progress, result view and what to look for, for one lesson."""
    st.markdown(lesson.narrative)
    c = lessons.recipes(lesson)[0].config
    infos = jobs.list_jobs(root)
    finished = sum(i.state == "completed" for i in infos)
    with ui.friendly_errors("Estimating the time"):
        st.caption(lessons.estimate_words(lesson, estimate(lesson.key, str(c.img_size), str(paths.examples_runs_dir()),
                                                           str(root), finished)))
    counts = lessons.progress(lesson, infos)
    has_examples = bool(lessons.example_runs(lesson, examples.list_examples()))
    ran_here = counts["active"] + counts["completed"] + counts["other"] > 0
    label = "Run it yourself" if has_examples and not ran_here else f"Start “{lesson.title}”"
    # Classroom mode: whether this browser may queue the lesson now, said before the click (runs it needs).
    refused = policy.refusal(root, [r.config for r in lessons.recipes(lesson)], "lesson") if policy.on else None
    if refused:
        st.caption(f":material/block: {refused}")
    if st.button(label, key=f"start-{lesson.key}", disabled=counts["active"] > 0 or bool(refused), type="primary",
                 help="Queues the lesson's runs here, one job at a time; the Trainer page can cancel them."):
        with ui.friendly_errors("Starting the lesson"):
            ids = lessons.start(lesson, root, asker=policy.asker())
            st.success(f"Queued {len(ids)} runs.")
            st.rerun()
    if counts["active"] and st.button("Cancel the lesson's runs", key=f"cancel-{lesson.key}",
                                      help="Stops the runs still waiting or training; finished results stay shown."):
        with ui.friendly_errors("Cancelling the lesson"), st.spinner("Stopping the lesson's runs…"):
            _, refused = lessons.cancel(lesson, root, asker=policy.asker())
            for sentence in refused:
                st.info(sentence, icon=":material/hourglass_top:")
    # Poll only while the lesson's runs wait or train: an idle tab costs nothing (issue 30: 4 watchers every 3 s).
    st.fragment(run_every=3 if counts["active"] else None)(watch)(lesson, bool(counts["active"]))
    st.markdown("**What to look for**\n\n" + "\n".join(f"- {p}" for p in lesson.look_for))


@st.cache_data(show_spinner=False, max_entries=32)
def _result(key: str, stamp: tuple, _infos: list) -> lesson_results.LessonResult:
    """The result view (bootstrap intervals, figures), made once per state of the lesson's runs (`stamp`)."""
    return lesson_results.lesson_result(lessons.LESSONS[key], _infos)


def show_result(lesson: lessons.Lesson, infos, where: str) -> None:
    """The lesson's result view from these runs (`where` keeps widget keys apart)."""
    with ui.friendly_errors("Showing the results"):
        result = _result(lesson.key, lessons.runs_stamp(lesson, infos), infos)
        st.markdown(f"**Result.** {escape_markdown(result.headline)}")
        st.dataframe(result.shown_table(), hide_index=True, key=f"table-{lesson.key}-{where}")
        for i, fig in enumerate(result.figures):
            st.plotly_chart(fig, key=f"fig-{lesson.key}-{where}-{i}")


def watch(lesson: lessons.Lesson, polling: bool = False) -> None:
    """Progress while the lesson's runs train; the latest finished result of each recipe (a restart replaces a row
    only when its new run finishes), else the shipped examples; a restart's problem is shown beside them."""
    infos = jobs.list_jobs(root)
    counts = lessons.progress(lesson, infos)
    if polling and not counts["active"]:
        st.rerun()  # the last run ended: redraw the page once, which stops the polling
    if counts["active"]:
        st.progress(counts["completed"] / counts["planned"],
                    text=f"{counts['completed']} of {counts['planned']} runs finished, {counts['active']} waiting "
                         "or training.")
    problem = lesson_progress.problem_words(lesson, infos)
    if problem:
        st.warning(problem, icon=":material/warning:")
    done = lesson_progress.finished_runs(lesson, infos)
    if done:
        fresh, shown = lesson_progress.replaced_rows(lesson, infos)
        st.success("Your results: runs trained on this computer." + (
            f" {fresh} of {shown} rows already come from the new start; the others stay until its runs finish."
            if counts["active"] else ""), icon=":material/check_circle:")
        show_result(lesson, done, "yours")
        return
    shipped = examples.list_examples()
    if not lessons.example_runs(lesson, shipped):
        if not counts["active"] and not problem:
            st.info("Not run yet: press the button to start it.")
        return
    st.info(lessons.example_words(lesson, shipped), icon=":material/menu_book:")
    show_result(lesson, shipped, "example")


tabs = st.tabs([lesson.title for lesson in lessons.LESSONS.values()] + [shift_lesson.TITLE, adult_lesson.TITLE])
for tab, lesson in zip(tabs, lessons.LESSONS.values()):
    with tab:
        show_lesson(lesson)
with tabs[-2]:  # reading lessons: the demo model's stored evaluation and one adult film, no training
    shift_lesson_ui.show()
with tabs[-1]:
    adult_lesson_ui.show(root)
