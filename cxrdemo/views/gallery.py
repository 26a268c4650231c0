"""The error gallery: a run's confusion matrix as selectable markers, and the test images of one cell.

Streamlit's selection events return nothing for a plotly Heatmap, so each cell is a square marker of a
scatter trace carrying (true, predicted) as customdata. Images are named by their path relative to the
dataset root; a heatmap is computed on demand only when that dataset is on this machine.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cxrdemo.data import resolve_data_root
from cxrdemo.data.naming import content_hash
from cxrdemo.errors import DatasetError
from cxrdemo.model.predictions import Predictions
from cxrdemo.views.text import safe_csv_cell


def confusion_markers_figure(p: Predictions) -> go.Figure:
    """Rows: true class, columns: predicted; one square marker per cell (click one to open its images)."""
    k = len(p.classes)
    cm = np.zeros((k, k), int)
    np.add.at(cm, (p.y_true, p.y_pred), 1)
    t, q = np.divmod(np.arange(k * k), k)
    counts = cm[t, q]
    names = [html.escape(c) for c in p.classes]
    colors = np.where(t == q, "#2e7d32", "#c62828")
    fig = go.Figure(go.Scatter(
        x=[names[j] for j in q], y=[names[i] for i in t], mode="markers+text", text=[str(c) for c in counts],
        # plain lists: a numpy array travels as a typed array, and a clicked point's row then comes back from
        # the browser as {"0": t, "1": q}, not [t, q]
        customdata=[[int(i), int(j)] for i, j in zip(t, q)], textfont={"color": "white", "size": 16},
        marker={"symbol": "square", "size": [28 + 50 * np.sqrt(c / max(1, cm.max())) for c in counts],
                    "color": colors, "opacity": [0.35 if c == 0 else 0.9 for c in counts]},
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text} images: click to see them<extra></extra>"))
    fig.update_layout(title="Confusion matrix (test images): click a cell", xaxis_title="Predicted",
                      yaxis_title="True", height=380, clickmode="event+select", dragmode=False)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=names)
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=names[::-1])
    return fig


def selected_cell(points: list[dict]) -> tuple[int, int] | None:
    """(true, predicted) of the first selected marker, from st.plotly_chart's selection points."""
    for point in points or []:
        data = point.get("customdata")
        if isinstance(data, dict):  # a typed-array row, as a browser serialises it
            data = [data.get("0"), data.get("1")]
        if isinstance(data, (list, tuple)) and len(data) == 2 and all(isinstance(v, (int, float)) for v in data):
            return int(data[0]), int(data[1])
    return None


def cell_images(p: Predictions, true: int, predicted: int) -> pd.DataFrame:
    """The test images of one cell: wrong answers most confident first, right ones least confident first."""
    rows = np.flatnonzero((p.y_true == true) & (p.y_pred == predicted))
    conf = p.probs[rows, predicted]
    order = np.argsort(-conf if true != predicted else conf, kind="stable")
    rows = rows[order]
    table = pd.DataFrame({"image": [p.images[i] for i in rows], "hash": [p.hashes[i] for i in rows],
                          "true_class": p.classes[true], "predicted_class": p.classes[predicted],
                          "p_predicted": p.probs[rows, predicted], "p_true": p.probs[rows, true]})
    if p.sets is not None:
        table["prediction_set"] = [" or ".join(c for c, m in zip(p.classes, p.sets[i]) if m) for i in rows]
    return table


def probability_note(p: Predictions) -> str:
    """Which probabilities the gallery shows: calibrated (as on Diagnosis) or, for an older run, the raw ones."""
    if p.raw is None:
        return ("Probabilities as the network gave them: this run was trained before calibrated probabilities "
                "were saved per image.")
    note = "Probabilities are calibrated (temperature scaling fitted on validation), as on the Diagnosis page."
    if p.sets is not None:
        note += " The prediction set holds the classes the model cannot rule out at 90% coverage."
    return note


def cell_caption(p: Predictions, true: int, predicted: int, n: int) -> str:
    """A sentence above the gallery of one cell."""
    t, q = p.classes[true], p.classes[predicted]
    if true == predicted:
        return f"{n} {t} image(s) classified right, the least sure first."
    return f"{n} {t} image(s) the model called {q}, the most confidently wrong first."


def data_root(data: str | None) -> str | None:
    """The dataset folder a run trained on (its config's `data`: a folder, `demo` or a lesson set), if on this machine."""
    if not data:
        return None
    try:
        return str(resolve_data_root(str(data)))
    except DatasetError:
        return None


def image_file(data_root: str | None, image: str, hash_: str = "") -> Path | None:
    """The file of a test image on this machine (data root + relative name), or None when it is not here.

    With `hash_` the file must also have that content: a changed or another dataset's file is not shown."""
    if not data_root:
        return None
    root = Path(data_root)
    path = (root / image).resolve()
    if root.resolve() not in path.parents or not path.is_file():  # a relative name must stay inside its root
        return None
    if hash_ and content_hash(path) != hash_:
        return None
    return path


def export_csv(df: pd.DataFrame) -> str:
    """The gallery table as CSV a spreadsheet shows as text."""
    return df.map(safe_csv_cell).to_csv(index=False)


def heatmap_png(run_dir: Path, image_path: Path) -> bytes:
    """The run's Grad-CAM of its own decision for one image file, blended over the image, as PNG bytes."""
    from cxrdemo.diagnosis import explain, result
    from cxrdemo.diagnosis.predict import load_model, read_radiograph

    model = load_model(str(run_dir), allow_path=True)
    rad = read_radiograph(str(image_path), image_path.name)
    heat = explain.heatmap(model, result.assess(model, rad))
    return explain.to_png_bytes(explain.overlay(rad.grey, heat.cam, 0.4))
