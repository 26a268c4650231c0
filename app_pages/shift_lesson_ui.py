"""The lesson "The promise under shift" on the Lessons page: the demo model's stored coverage read aloud (no training
job, nothing computed on the page)."""

from __future__ import annotations

import streamlit as st

from cxrdemo.views import shift_lesson as sl
from cxrdemo.views.text import escape_markdown
from app_pages import ui


def show() -> None:
    """Narrative, the result read from the demo model's evaluation record, what to look for."""
    st.markdown(sl.NARRATIVE)
    with ui.friendly_errors("Reading the demo model's evaluation"):
        result = sl.shift_result()
        if result is None:
            st.info("The demo model's evaluation record (weights/demo/evaluation.json) is not in this installation: "
                    "this lesson reads it. `python -m cxrdemo demo-model --card-only` with the evaluation sets "
                    "writes it.")
        else:
            st.caption("Read from the demo model's own evaluation record (`python -m cxrdemo demo-model`): "
                       "nothing is trained or computed here.")
            st.markdown(f"**Result.** {escape_markdown(result.headline)}")
            st.dataframe(result.shown_table(), hide_index=True, key="table-shift")
            for i, fig in enumerate(result.figures):
                st.plotly_chart(fig, key=f"fig-shift-{i}")
    st.markdown("**What to look for**\n\n" + "\n".join(f"- {p}" for p in sl.LOOK_FOR))
