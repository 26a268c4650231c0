"""Shared Streamlit pieces for "can I trust this heatmap?": the CAM scorecard table and its job (Compare, Diagnosis)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from cxrdemo.runs import lifecycle
from cxrdemo.views import heatmaps
from cxrdemo.views.text import escape_markdown as md
from app_pages import ui

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
            heatmaps.submit_scorecard(run_id, root)
            active = True
    st.fragment(run_every=REFRESH_S if active else None)(_job_progress)(run_dir, key, table is not None)
