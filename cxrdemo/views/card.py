"""The job card's learning chart: loss and accuracy side by side, train and validation, readable at a glance."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cxrdemo.runs import store as runs

_SPLITS = (("train", "solid", "#1f77b4"), ("validation", "dash", "#d62728"))


def card_figure(run_dir: Path, height: int = 260) -> go.Figure:
    """Loss (left) and accuracy (right) per epoch, train solid and validation dashed; legend below."""
    m = runs.read_metrics(run_dir)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"), horizontal_spacing=0.12)
    for col, (measure, pair) in enumerate((("loss", ("train_loss", "val_loss")),
                                           ("accuracy", ("train_acc", "val_acc"))), start=1):
        for name, (split, dash, color) in zip(pair, _SPLITS):
            if name not in m or not m[name].notna().any():
                continue
            fig.add_trace(go.Scatter(x=m["epoch"], y=m[name], name=split, legendgroup=split, showlegend=col == 1,
                                     mode="lines+markers", line={"dash": dash, "color": color}, marker_size=6,
                                     hovertemplate=f"{split} {measure}, epoch %{{x}}: %{{y:.3f}}<extra></extra>"),
                          row=1, col=col)
    fig.update_xaxes(title_text="epoch", dtick=1 if len(m) <= 12 else None)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      legend={"orientation": "h", "y": -0.3, "x": 0.5, "xanchor": "center"})
    return fig
