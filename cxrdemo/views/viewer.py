"""The viewer's words and figure: window choices, the header's facts, the image and its heatmap as layers of one
plotly figure (one zoom for both), a person's box, the pointing games in sentences, and the marks' export.

Streamlit returns no box selection for a plotly image or heatmap trace (streamlit/streamlit#8760), so the image
lies under an invisible grid of scatter points: a box drawn on it comes back as the selection's `box`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cxrdemo.data import ImageMeta, window
from cxrdemo.data.window import StoredPixels, Window
from cxrdemo.diagnosis import explain
from cxrdemo.diagnosis.pointing import Box, Mark, PointingScore, mark_rows
from cxrdemo.views import numbers
from cxrdemo.views.compare import to_csv
from cxrdemo.views.population import age_words

SHOWN_NOT_SEEN = ("Window, inversion and zoom change what you see, never what the model reads: the model always "
                  "reads the film as its preprocessing record prepares it.")
HOW_TO_MARK = ("Mark the finding: drag a box on the image (the box tool is on; zoom with the mouse wheel or the "
               "toolbar, double-click to reset the zoom).")
PRESET_WORDS = {"full": "Full range", "lung": "Lung", "mediastinum": "Mediastinum", "bone": "Bone"}
FREE = "Free (sliders)"
PRESET_NOTE = ("Lung, mediastinum and bone are set on this film's own range of values: a radiograph has no fixed "
               "scale like CT's Hounsfield units.")
SEXES = {"M": "male", "F": "female"}
GRID = 48  # invisible points per side under the image: a box wider than 1/48 of the film catches one
CONFIG = {"scrollZoom": True, "displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "autoScale2d"]}


def header_line(meta: ImageMeta) -> str | None:
    """The DICOM header's view, age and sex in words (never a name, ID or date); None for another format."""
    if meta.format != "dicom":
        return None
    parts = [f"{meta.view} view"] if meta.view else []
    parts += [age_words(meta.age_years)] if meta.age_years is not None else []
    parts += [SEXES[meta.sex]] if meta.sex in SEXES else []
    if not parts:
        return "The DICOM header gives no view, age or sex."
    return "From the DICOM header: " + " · ".join(parts) + "."


def window_choices(px: StoredPixels) -> dict[str, tuple]:
    """Label -> choice: the header's VOI LUTs and windows first (the film's own default), then the presets, free."""
    out: dict[str, tuple] = {}
    for i in range(len(px.tables)):
        out["Header VOI LUT" + (f" {i + 1}" if len(px.tables) > 1 else "")] = ("table", i)
    for i, w in enumerate(px.windows):
        n = f" {i + 1}" if len(px.windows) > 1 else ""
        out[f"Header window{n} (centre {w.centre:g}, width {w.width:g})"] = ("window", i)
    out.update({label: ("preset", key) for key, label in PRESET_WORDS.items()})
    out[FREE] = ("free",)
    return out


def shown_image(px: StoredPixels, choice: tuple, free: tuple[float, float] = (0.5, 1.0),
                invert: bool = False) -> np.ndarray:
    """The film as shown for a choice of window_choices (`free`: centre and width as fractions of its range)."""
    if choice[0] == "table":
        return window.apply_table(px, choice[1], invert)
    return window.apply_window(px, chosen_window(px, choice, free), invert)


def chosen_window(px: StoredPixels, choice: tuple, free: tuple[float, float] = (0.5, 1.0)) -> Window:
    """The window of a choice that is one (not a VOI LUT)."""
    if choice[0] == "window":
        return px.windows[choice[1]]
    if choice[0] == "preset":
        return window.preset(px, choice[1])
    return window.relative_window(px, *free)


def window_words(px: StoredPixels, w: Window) -> str:
    """'Centre 1,234, width 800 in the film's values' (DICOM), or in percent of the grey scale (any other image)."""
    if (px.lo, px.hi) == (0.0, 1.0):
        return f"Centre {numbers.percent(w.centre, 0)}, width {numbers.percent(w.width, 0)} of the grey scale."
    return f"Centre {w.centre:,.0f}, width {w.width:,.0f} in the film's stored values."


def _png_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(explain.to_png_bytes(rgb)).decode("ascii")


def figure(shown: np.ndarray, cam: np.ndarray | None, opacity: float, box: Box | None = None,
           peak: tuple[float, float] | None = None, revision: str = "") -> go.Figure:
    """The shown film (HxW in [0, 1]) with the heatmap as a layer above it, the person's box and the map's peak.
    Axes are the shown film's pixels (y down); `revision` keeps the zoom across reruns of the same film."""
    h, w = shown.shape
    grey = np.uint8(np.clip(shown, 0.0, 1.0) * 255 + 0.5)
    fig = go.Figure(go.Image(source=_png_uri(grey), x0=0.5, y0=0.5, dx=1, dy=1, hoverinfo="skip", name="film"))
    if cam is not None and opacity > 0:
        rgba = np.dstack([explain.heat_colours(cam), np.full(cam.shape, round(255 * opacity), np.uint8)])
        sx, sy = w / cam.shape[1], h / cam.shape[0]
        fig.add_trace(go.Image(source=_png_uri(rgba), x0=sx / 2, y0=sy / 2, dx=sx, dy=sy, hoverinfo="skip",
                               name="heatmap"))
    gx, gy = np.meshgrid((np.arange(GRID) + 0.5) * w / GRID, (np.arange(GRID) + 0.5) * h / GRID)
    fig.add_trace(go.Scatter(x=gx.ravel(), y=gy.ravel(), mode="markers", hoverinfo="none", showlegend=False,
                             marker=dict(size=6, opacity=0), selected=dict(marker=dict(opacity=0)),
                             unselected=dict(marker=dict(opacity=0)), name="grid"))
    if box is not None:
        fig.add_shape(type="rect", x0=box.x0 * w, x1=box.x1 * w, y0=box.y0 * h, y1=box.y1 * h,
                      line=dict(color="#39ff14", width=2))
    if peak is not None:
        fig.add_trace(go.Scatter(x=[peak[0] * w], y=[peak[1] * h], mode="markers", hoverinfo="skip",
                                 marker=dict(symbol="x-thin", size=16, line=dict(width=3, color="white")),
                                 showlegend=False, name="peak"))
    fig.update_xaxes(range=[0, w], visible=False, constrain="domain")
    fig.update_yaxes(range=[h, 0], visible=False, scaleanchor="x", constrain="domain")
    fig.update_layout(margin=dict(l=0, r=0, t=0, b=0), height=min(720, max(360, round(560 * h / w))),
                      dragmode="select", uirevision=revision or "viewer", plot_bgcolor="black", showlegend=False)
    return fig


def box_from_selection(selection: Mapping | None, width: int, height: int) -> Box | None:
    """The last box of a plotly selection event on `figure` (pixels of a width x height film), or None."""
    boxes = (selection or {}).get("box") or []
    if not boxes:
        return None
    last = boxes[-1]
    return Box.from_pixels(last.get("x") or [], last.get("y") or [], width, height)


def pointing_sentence(s: PointingScore) -> str:
    """'42% of the heatmap lies in your box; a map spread evenly would put 12% there. Its peak is inside it.'"""
    if s.energy_share is None:
        return f"The {s.method} heatmap is empty: it points nowhere."
    peak = "inside" if s.peak_inside else "outside"
    return (f"{numbers.percent(s.energy_share, 0)} of the {s.method} heatmap lies in your box; a map spread evenly "
            f"would put {numbers.percent(s.uniform_share, 0)} there. Its peak is {peak} your box.")


def pointing_table(scores: Iterable[PointingScore]) -> pd.DataFrame:
    """One row per method: the share in the box, the even-spread baseline, and whether the peak is in it."""
    return pd.DataFrame([{"Method": s.method, "Heatmap in your box": numbers.percent(s.energy_share, 0),
                          "Spread evenly": numbers.percent(s.uniform_share, 0),
                          "× even": numbers.MISSING if s.lift is None else f"{s.lift:.1f}×",
                          "Peak in your box": {True: "yes", False: "no", None: numbers.MISSING}[s.peak_inside]}
                         for s in scores])


POINTING_NOTE = ("Energy-based pointing game (Wang et al. 2020) and pointing game (Zhang et al. 2016). Saliency maps "
                 "localise worse than radiologists do (Saporta et al. 2022): a heatmap on the film's edge, the neck or "
                 "the apices is a warning sign, whatever the verdict.")


def marks_csv(marks: Iterable[Mark]) -> str:
    """Every mark as CSV (a row per scored method), safe to open in a spreadsheet."""
    rows = mark_rows(marks)
    return to_csv(pd.DataFrame(rows)) if rows else ""


def marks_json(marks: Iterable[Mark]) -> str:
    """Every mark as JSON: a list of rows as in marks_csv."""
    return json.dumps(mark_rows(marks), indent=1)
