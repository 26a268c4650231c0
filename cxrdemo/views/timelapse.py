"""The probe timelapse as plotly figures: heatmaps over the probe thumbnails per epoch, probabilities over epochs.

The epoch slider is a plotly animation (frames + slider + play button): moving it runs in the browser, never
a Streamlit rerun. Images travel as small PNG data URIs, so a figure of 3 runs x 6 probes x 20 epochs stays
around a megabyte.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cxrdemo.errors import RunError
from cxrdemo.model import probes
from cxrdemo.views import numbers, words

MAX_RUNS = 3
TOP_PX = 70  # the toolbar's strip and the first row's cell notes
RIGHT_PX = 40  # the row titles, written along the right edge
TITLE_CHARS = 26  # a row title longer than a row (170 px at 11 px per character) is cut with '…'
OPACITY = 0.45


def short_title(name: str) -> str:
    """A run's row title, cut to fit along its row ('…' at the end)."""
    return name if len(name) <= TITLE_CHARS else name[:TITLE_CHARS - 1] + "…"


def _png_uri(rgb: np.ndarray) -> str:
    from cxrdemo.diagnosis.explain import to_png_bytes

    return "data:image/png;base64," + base64.b64encode(to_png_bytes(rgb)).decode()


def cell_image(timeline: probes.Timeline, epoch_index: int, probe: int) -> np.ndarray:
    """The probe's thumbnail with the heatmap of that epoch blended over it (RGB uint8)."""
    from cxrdemo.diagnosis.explain import overlay

    thumb = timeline.thumbnails[probe].astype(np.float32) / 255.0
    if epoch_index < 0:
        return overlay(thumb, np.zeros((2, 2), np.float32), 0.0)
    return overlay(thumb, timeline.heatmaps[epoch_index, probe].astype(np.float32) / 255.0, OPACITY)


def _epoch_index(timeline: probes.Timeline, epoch: int) -> int:
    """Index of the last recorded epoch at or before `epoch` (-1: none yet)."""
    done = [i for i, e in enumerate(timeline.epochs) if e <= epoch]
    return done[-1] if done else -1


def _cell_text(timeline: probes.Timeline, i: int, probe: int) -> str:
    true = int(timeline.labels[probe])
    if i < 0:
        return timeline.classes[true]
    p = timeline.probs[i, probe]
    right = int(np.argmax(p)) == true
    return f"{timeline.classes[true]}: p={numbers.percent(p[true])} {'right' if right else 'wrong'}"


def stamp(run_dirs: dict[str, Path]) -> tuple[int, ...]:
    """The newest probe file of each run (ns): what a cached timelapse is keyed on, so a new epoch redraws it."""
    return tuple(max((f.stat().st_mtime_ns for f in (Path(d) / "probes").glob("*.npz")), default=0)
                 for d in run_dirs.values())


def read_timelines(run_dirs: dict[str, Path]) -> dict[str, probes.Timeline]:
    """Run id -> its probes, for the runs that have them (at most MAX_RUNS, in the order given)."""
    out = {}
    for run_id, d in run_dirs.items():
        try:
            t = probes.read_timeline(d)
        except RunError:
            continue
        if t is not None and len(t.epochs):
            out[run_id] = t
        if len(out) == MAX_RUNS:
            break
    return out


def timelapse_figure(timelines: dict[str, probes.Timeline], animate: bool = True,
                     names: dict[str, str] | None = None) -> go.Figure:
    """One row per run, one column per probe; the slider (and play button) moves through the epochs.

    Each cell: the probe's thumbnail, the heatmap of the predicted class at that epoch, and above it the
    true class, the probability the model gave it and whether the answer was right. animate=False: the
    last epoch only (the Trainer's live strip).
    """
    runs_ = list(timelines)[:MAX_RUNS]
    n_cols = max(len(t.names) for t in timelines.values())
    epochs = sorted({e for t in timelines.values() for e in t.epochs})
    shown = epochs if animate else epochs[-1:]
    fig = make_subplots(rows=len(runs_), cols=n_cols, horizontal_spacing=0.01, vertical_spacing=0.08,
                        row_titles=[html.escape(short_title((names or {}).get(r) or words.run_name(r))) for r in runs_])
    for title in fig.layout.annotations:  # a row title reads along its row's right edge, inside the right margin
        title.update(font_size=11, xshift=4)

    def cells(epoch: int) -> tuple[list[go.Image], list[dict]]:
        images, notes = [], []
        for r, run_id in enumerate(runs_):
            t = timelines[run_id]
            i = _epoch_index(t, epoch)
            for c in range(n_cols):
                if c < len(t.names):
                    images.append(go.Image(source=_png_uri(cell_image(t, i, c)), hoverinfo="skip"))
                    notes.append({"text": _cell_text(t, i, c), "row": r + 1, "col": c + 1})
                else:
                    images.append(go.Image(source=_png_uri(np.zeros((2, 2, 3), np.uint8)), hoverinfo="skip"))
        return images, notes

    images, notes = cells(shown[-1] if not animate else shown[0])
    for k, img in enumerate(images):
        fig.add_trace(img, row=k // n_cols + 1, col=k % n_cols + 1)

    def annotations(notes: list[dict]) -> list[dict]:
        out = []
        for n in notes:
            axis = (n["row"] - 1) * n_cols + n["col"]
            suffix = "" if axis == 1 else str(axis)
            out.append({"text": n["text"], "xref": f"x{suffix} domain", "yref": f"y{suffix} domain", "x": 0.5, "y": 1.0,
                            "yanchor": "bottom", "showarrow": False, "font_size": 10})
        return out

    row_titles = list(fig.layout.annotations)
    fig.update_layout(annotations=row_titles + annotations(notes))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    # The top margin holds the toolbar (about 30 px) above the first row's cell notes, so neither covers the other.
    fig.update_layout(height=170 * len(runs_) + (110 if animate else 30) + TOP_PX,
                      margin={"l": 10, "r": RIGHT_PX, "t": TOP_PX, "b": 10},
                      title=None if animate else f"Probe images after epoch {shown[-1]}")
    if animate and len(shown) > 1:
        frames = []
        for e in shown:
            imgs, nts = cells(e)
            frames.append(go.Frame(data=imgs, name=str(e), layout={"annotations": row_titles + annotations(nts)}))
        fig.frames = frames
        step = {"mode": "immediate", "frame": {"duration": 0, "redraw": True}, "transition": {"duration": 0}}
        fig.update_layout(
            sliders=[{"active": 0, "currentvalue": {"prefix": "Epoch "}, "pad": {"t": 10},
                          "steps": [{"label": str(e), "method": "animate", "args": [[str(e)], step]} for e in shown]}],
            updatemenus=[{"type": "buttons", "showactive": False, "x": 0, "y": 0, "xanchor": "right", "yanchor": "top",
                              "pad": {"t": 40, "r": 10},
                              "buttons": [{"label": "Play", "method": "animate",
                                            "args": [None, {"frame": {"duration": 700, "redraw": True},
                                                             "fromcurrent": True, "transition": {"duration": 0}}]},
                                       {"label": "Pause", "method": "animate",
                                            "args": [[None], {"mode": "immediate", "frame": {"duration": 0}}]}]}])
    return fig


def probability_figure(timelines: dict[str, probes.Timeline], colors: dict[str, str] | None = None,
                       names: dict[str, str] | None = None) -> go.Figure:
    """Each probe's probability of its true class over the epochs: one line per probe, one colour per run."""
    fig = go.Figure()
    for run_id, t in timelines.items():
        run = (names or {}).get(run_id) or words.run_name(run_id)
        for p, name in enumerate(t.names):
            true = int(t.labels[p])
            fig.add_trace(go.Scatter(
                x=t.epochs, y=t.probs[:, p, true], mode="lines+markers", marker_size=4, legendgroup=run_id,
                name=run, showlegend=p == 0, line={"color": (colors or {}).get(run_id), "width": 1.5},
                hovertemplate=f"{html.escape(run)} · {html.escape(name)} ({t.classes[true]})"
                              "<br>epoch %{x}: p(true class) %{y:.3f}<extra></extra>"))
    fig.add_hline(y=0.5, line_dash="dot", line_color="grey")
    fig.update_layout(title="Probability of the true class, per probe image", xaxis_title="Epoch",
                      yaxis_title="p(true class)", yaxis_range=[0, 1.02], height=300, legend_title_text="Run")
    return fig
