"""Shared Streamlit pieces for "can I trust this heatmap?": the CAM scorecard table and its job (Compare, Diagnosis),
a heatmap's faithfulness line and its randomisation check (Diagnosis)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import streamlit as st

from cxrdemo.data.shrink import display_copy
from cxrdemo.diagnosis import explain, faithfulness, predict
from cxrdemo.runs import lifecycle
from cxrdemo.views import checks, heatmaps
from cxrdemo.views.text import escape_markdown as md
from app_pages import film, ui

REFRESH_S = 2.0


def scorecard_table(run_dir: Path, key: str) -> dict | None:
    """The run's scorecard table with its caption (or a line saying there is none); returns the table."""
    table = None
    with ui.friendly_errors("Reading the CAM scorecard"):
        table = heatmaps.read_table(run_dir)
    if table is None:
        st.caption("This model has no CAM scorecard yet: it scores every heatmap method with ROAD on test images "
                   "and tells which one points at what the model uses.")
        return None
    st.dataframe(heatmaps.scorecard_frame(table), hide_index=True, key=f"scorecard_{key}")
    st.caption(heatmaps.scorecard_caption(table))
    return table


def _job_progress(run_dir: Path, key: str, had_table: bool) -> None:
    """Progress of the scorecard job, refreshed by its fragment; a cancel button; a full rerun once it ends."""
    status = None
    with ui.friendly_errors("Reading the scorecard job"):
        status = heatmaps.scorecard_status(run_dir)
    if status and status.get("state") in lifecycle.ACTIVE:
        st.progress(heatmaps.job_fraction(status), text=md(heatmaps.job_line(status)))
        if st.button("Cancel the scorecard", key=f"scorecard_cancel_{key}"):
            with ui.friendly_errors("Cancelling the scorecard"):
                heatmaps.cancel_scorecard(run_dir, grace_s=5.0)
                st.rerun()
    elif status:
        seen = f"scorecard_seen_{key}"
        if status.get("state") == "completed" and not had_table and st.session_state.get(seen) != status.get("finished"):
            st.session_state[seen] = status.get("finished")  # once per job: a table for an older model.pt stays hidden
            st.rerun()  # the table was written since this page drew it: show it
        st.caption(md(heatmaps.job_line(status)))


def scorecard_panel(run_dir: Path, run_id: str, root: Path | str, key: str) -> None:
    """The table, and for runs of the store a button that starts (or follows) the scorecard job."""
    table = scorecard_table(run_dir, key)
    if not heatmaps.can_score(run_dir, root):
        return
    status = heatmaps.scorecard_status(run_dir)
    active = bool(status and status.get("state") in lifecycle.ACTIVE)
    if not active and st.button("Compute the scorecard" if table is None else "Compute the scorecard again",
                                key=f"scorecard_start_{key}",
                                help="A background job like training (a few minutes for a small model on 2 "
                                     "cores): you can leave this page while it runs."):
        with ui.friendly_errors("Starting the scorecard"):
            heatmaps.submit_scorecard(run_id, root, asker=ui.classroom().asker())  # counted like a run
            active = True
    st.fragment(run_every=REFRESH_S if active else None)(_job_progress)(run_dir, key, table is not None)


# ---------------------------------------------------------------- one heatmap: its faithfulness and sanity check

FAITHFULNESS_HELP = ("ROAD (Rong et al. 2022): the calibrated probability of the explained class (the one on the "
                     "bar) after removing (and filling in) the most highlighted 20% of the pixels, against removing "
                     "the least highlighted 20%. Compared with 5 random heatmaps: a map only 'points at what the "
                     "model uses' when it beats them by more than their spread.")


@st.cache_data(max_entries=64, show_spinner=False)
def _faithfulness(run: str, mtime: int, root: str, digest: str, method: str, target: int,
                  _res, _heat) -> faithfulness.Faithfulness:
    """ROAD of one model's heatmap for one image (a few seconds: computed after everything else is drawn)."""
    return heatmaps.score(film.load(run, mtime, root), _res, _heat, heatmaps.busy_threads(root))


def faithfulness_slot(run: str, root: str, res, hm) -> tuple:
    """A place beside a heatmap for its faithfulness line, filled by faithfulness_section at the end of the page."""
    return st.empty(), (run, predict.model_mtime(run, root), root, res.digest, hm.method, hm.target, res, hm)


def faithfulness_section(pending: list[tuple]) -> None:
    """Fill each heatmap's place with its faithfulness number and reading, one after the other."""
    for slot, args in pending:
        with slot.container():
            with st.spinner("Scoring the heatmap's faithfulness (ROAD: removes what it highlights)…"):
                with ui.friendly_errors("The faithfulness score"):
                    f = _faithfulness(*args)
                    st.caption(heatmaps.faithfulness_line(dataclasses.replace(f, class_name=md(f.class_name))),
                               help=FAITHFULNESS_HELP)


def preselect_method(run_dir: Path, run: str) -> None:
    """Start with the scorecard's most faithful fast method when the chosen model has a scorecard (once per model)."""
    if st.session_state.get("method_for") == run:
        return
    st.session_state["method_for"] = run
    with ui.friendly_errors("Reading the CAM scorecard"):
        best = heatmaps.preselect(heatmaps.read_table(run_dir), list(explain.CAM_METHODS))
        if best:
            st.session_state["method"] = best


def sanity_section(model: predict.LoadedModel, rad: predict.Radiograph, res, hm) -> None:
    """Randomise and look again: the heatmap as the model's layers are re-initialised, head first (on a button)."""
    st.markdown("**Randomise and look again**")
    if hm.method in heatmaps.STRIP_SKIPS:
        st.caption(f"{hm.method} takes half a minute per map on this machine: choose another method to see how "
                   "its map changes as the model is destroyed.")
        return
    key = ("sanity", model.run_id, str(model.path), rad.digest, hm.method, hm.target)
    if st.button("Randomise and look again", key="sanity_button",
                 help="Re-initialises the model's layers from the head down (on a copy) and draws the heatmap "
                      "again after each step. A few seconds."):
        with st.spinner("Re-initialising the layers and drawing the maps…"), ui.friendly_errors("The sanity check"):
            st.session_state["sanity"] = (key, heatmaps.randomise(model, res.image, hm.method, hm.target))
    saved = st.session_state.get("sanity")
    if not saved or saved[0] != key:
        st.caption("Would this map change if the model were destroyed? Re-initialise its layers, from the head "
                   "down, and look again.")
        return
    check = saved[1]
    strip = heatmaps.strip(check, display_copy(rad.grey))
    for col, (img, caption) in zip(st.columns(len(strip)), strip):
        col.image(img, caption=caption, width="stretch", output_format="PNG")
    st.caption(checks.sanity_sentence(check) + " ρ: rank correlation with the original map; SSIM: structural similarity.")
