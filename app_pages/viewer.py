"""The viewer of one film on Diagnosis: the header's facts, window/level, invert, zoom and pan on the film and its
heatmap together, and "does the model look where I look?" (a box, scored against every fast heatmap).

Marks are kept per image content (sha256) in this browser session only, and can be downloaded (CSV, JSON)."""

from __future__ import annotations

import dataclasses

import streamlit as st

from cxrdemo.data import window
from cxrdemo.diagnosis import cam_cost, explain, pointing, predict, result
from cxrdemo.views import viewer as vv
from cxrdemo.views.text import escape_markdown as md
from app_pages import film

MARKS = "viewer:marks"  # sha256 -> pointing.Mark
CONSUMED = "viewer:consumed"  # sha256 -> the last selection box made into a mark (a cleared mark stays cleared)
FAST_METHODS = [m for m in explain.CAM_METHODS if m not in cam_cost.SLOW_METHODS]


def marks() -> dict[str, pointing.Mark]:
    """This session's marks, by image content."""
    return st.session_state.setdefault(MARKS, {})


def section(run: str, root: str, model: predict.LoadedModel, rad: predict.Radiograph, res: result.ImageResult,
            hm: explain.Heatmap, target: str | None, opacity: float) -> bool:
    """The header's facts, and the viewer when the person opens it; True when it showed the film."""
    facts = vv.header_line(rad.meta)
    if facts:
        st.caption(md(facts))
    if not st.toggle("Viewer: window/level, zoom, and mark the finding", key="viewer_on",
                     help="Look at the film as you would on a workstation, and draw a box on the finding to see "
                          "whether the heatmaps point at it."):
        return False
    px = rad.stored if rad.stored is not None else window.from_grey(rad.grey)
    shown = _windowed(px, rad.digest)
    st.caption(vv.SHOWN_NOT_SEEN)
    mark = marks().get(rad.digest)
    scores = _scores(run, root, rad, res, hm, target, mark.box) if mark else []
    here = next((s for s in scores if s.method == hm.method), None)
    fig = vv.figure(shown, hm.cam, opacity, mark.box if mark else None, here.peak if here else None, rad.digest)
    event = st.plotly_chart(fig, key=f"viewer_{rad.digest[:16]}", on_select="rerun", selection_mode="box",
                            config=vv.CONFIG)
    st.caption(vv.HOW_TO_MARK)
    drawn = vv.box_from_selection(getattr(event, "selection", None), shown.shape[1], shown.shape[0])
    consumed = st.session_state.setdefault(CONSUMED, {})
    if drawn is not None and drawn != consumed.get(rad.digest):
        consumed[rad.digest] = drawn
        marks()[rad.digest] = pointing.Mark(rad.digest, rad.name, drawn, rad.meta.width, rad.meta.height)
        st.rerun()  # draw the box and its scores at once
    if mark is not None:
        marks()[rad.digest] = dataclasses.replace(mark, model=model.run_id, target=model.classes[hm.target],
                                                  scores=tuple(scores))
        _pointing(scores, here, rad.digest)
    _downloads()
    return True


def _windowed(px, digest: str):
    """The window widgets and the film as they show it."""
    choices = vv.window_choices(px)
    c1, c2 = st.columns([3, 1])
    label = c1.selectbox("Window", list(choices), key="viewer_window", help=vv.PRESET_NOTE)
    invert = c2.toggle("Invert", key="viewer_invert")
    choice = choices[label]
    free = (0.5, 1.0)
    if choice == ("free",):
        s1, s2 = st.columns(2)
        free = (s1.slider("Level (centre), % of the film's range", 0, 100, 50, key="viewer_level") / 100,
                s2.slider("Window (width), % of the film's range", 1, 200, 100, key="viewer_width") / 100)
    if choice[0] != "table":
        st.caption(vv.window_words(px, vv.chosen_window(px, choice, free)))
    return vv.shown_image(px, choice, free, invert)


def _scores(run: str, root: str, rad: predict.Radiograph, res: result.ImageResult, hm: explain.Heatmap,
            target: str | None, box: pointing.Box) -> list[pointing.PointingScore]:
    """The shown method's score first, then every other fast method's (their heatmaps are cached and quick)."""
    cams = {hm.method: hm.cam}
    for method in FAST_METHODS:
        if method not in cams:
            cams[method] = film.heatmap_for(run, root, rad, method, target, res).cam
    return pointing.score_all(cams, box)


def _pointing(scores: list[pointing.PointingScore], here: pointing.PointingScore | None, digest: str) -> None:
    """The sentence for the shown method, the table for all, and the way to clear the box."""
    if here is not None:
        st.markdown(f"**{vv.pointing_sentence(here)}**")
    st.dataframe(vv.pointing_table(scores), hide_index=True, key="viewer_scores")
    st.caption(vv.POINTING_NOTE)
    if st.button("Clear my box", key="viewer_clear"):
        marks().pop(digest, None)
        st.rerun()


def _downloads() -> None:
    """Every mark of this session, as CSV and JSON (students' marks beside the model's)."""
    kept = list(marks().values())
    if not kept:
        return
    c1, c2 = st.columns(2)
    c1.download_button(f"Download my marks (CSV, {len(kept)} film{'s' if len(kept) != 1 else ''})",
                       data=vv.marks_csv(kept), file_name="marks.csv", mime="text/csv", on_click="ignore",
                       key="viewer_csv")
    c2.download_button("Download my marks (JSON)", data=vv.marks_json(kept), file_name="marks.json",
                       mime="application/json", on_click="ignore", key="viewer_json")
