"""Runs -> plotly figures for the Compare page: learning curves, the cost/benefit trade-off, confusion, ROC."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from cxrdemo.errors import RunError
from cxrdemo.model import metrics
from cxrdemo.runs import store as runs
from cxrdemo.views import numbers, words
from cxrdemo.views.compare import TEST_METRIC_LABELS, point_labels

LEGEND_BELOW = {"orientation": "h", "yanchor": "top", "y": -0.2, "xanchor": "left", "x": 0}  # the plot keeps the full width
CURVE_METRICS = {"loss": ("train_loss", "val_loss", "Loss"), "accuracy": ("train_acc", "val_acc", "Accuracy")}
THRESHOLD_COLOUR = "#c0392b"
_PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Dark24


LEGEND_ROW_PX = 22  # one row of a horizontal legend
AXIS_TITLE_PX = 60  # tick labels and the x-axis title under the plot area
ASSUMED_WIDTH_PX = 560  # a half-page column: the narrowest a chart with a legend is shown at


def legend_rows(names: list[str], width_px: int = ASSUMED_WIDTH_PX) -> int:
    """How many rows a horizontal legend of these entries takes at `width_px` (an entry: its symbol + its text)."""
    rows, used = 1, 0
    for name in names:
        w = 45 + 7 * len(name)
        if used and used + w > width_px:
            rows, used = rows + 1, 0
        used += w
    return rows


def legend_below(fig: go.Figure, plot_px: int) -> go.Figure:
    """The legend under the x-axis title, in a bottom margin sized to hold every row: it neither scrolls nor
    covers the axis; the plot area keeps `plot_px` whatever the number of runs."""
    names = [t.name for t in fig.data if t.showlegend is not False and t.name]
    rows = legend_rows(names)
    bottom = AXIS_TITLE_PX + rows * LEGEND_ROW_PX + 10
    fig.update_layout(height=plot_px + bottom + 60, margin={"b": bottom, "t": 60},
                      legend={"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom",
                              "xanchor": "left", "x": 0, "title_text": ""})
    return fig


def run_colors(run_ids: Iterable[str]) -> dict[str, str]:
    """One stable colour per run, in the order given (the same run keeps its colour across charts)."""
    return {r: _PALETTE[i % len(_PALETTE)] for i, r in enumerate(run_ids)}


def ema(values: Iterable[float], weight: float) -> np.ndarray:
    """Exponential moving average (TensorBoard-style, weight 0 = raw); NaNs are skipped, not propagated."""
    x = np.asarray(list(values), dtype=float)
    if not 0 <= weight < 1:
        raise ValueError("smoothing weight must be in [0, 1)")
    out, last = np.empty_like(x), math.nan
    for i, v in enumerate(x):
        if not math.isnan(v):
            last = v if math.isnan(last) else weight * last + (1 - weight) * v
        out[i] = last if not math.isnan(v) else math.nan
    return out


def _empty(message: str, title: str = "") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False, height=320)
    return fig


def curves_figure(infos: list[runs.RunInfo], metric: str = "loss", smoothing: float = 0.0,
                  colors: dict[str, str] | None = None) -> go.Figure:
    """Train (solid) and val (dashed) `metric` per epoch, one colour per run; hover shows the exact values."""
    train_col, val_col, label = CURVE_METRICS[metric]
    colors = colors or run_colors(i.run_id for i in infos)
    names = dict(zip((i.run_id for i in infos), words.run_names([i.run_id for i in infos], [i.example for i in infos])))
    fig = go.Figure()
    for info in infos:
        m = runs.read_metrics(info.path) if not info.damaged else pd.DataFrame()
        if not len(m):
            continue
        for col, split, dash in ((train_col, "train", "solid"), (val_col, "val", "dash")):
            raw = m[col].to_numpy(dtype=float)
            shown = ema(raw, smoothing) if smoothing else raw
            name = names[info.run_id]
            shape = numbers.d3(col)
            hover = (f"{name} · {split}<br>epoch %{{x}}<br>{label.lower()} %{{customdata:{shape}}}"
                     "<br>%{text} trainable parameters")
            if smoothing:
                hover += f" (smoothed %{{y:{shape}}})"
            fig.add_trace(go.Scatter(
                x=m["epoch"].to_numpy(), y=shown, customdata=raw, name=f"{name} · {split}",
                text=[_fmt_int(v) for v in m["trainable_params"]],
                legendgroup=info.run_id, mode="lines+markers", marker_size=5,
                line=dict(color=colors.get(info.run_id), dash=dash), hovertemplate=hover + "<extra></extra>"))
    if not fig.data:
        return _empty("No finished epoch yet in the chosen runs.", label)
    for info in infos:  # a gradual:T run: mark the epoch its trunk started learning
        for epoch, before, after in unfreeze_epochs(runs.read_metrics(info.path) if not info.damaged else None):
            fig.add_vline(x=epoch - 0.5, line_dash="dot", line_color=colors.get(info.run_id, "grey"),
                          annotation_text=f"{names[info.run_id]}: trunk unfrozen ({before:,} → {after:,} trainable)",
                          annotation_font_size=10, annotation_textangle=-90, annotation_position="top left")
    fig.update_layout(title=f"{label} per epoch (solid: train, dashed: validation)", hovermode="closest",
                      xaxis_title="Epoch", yaxis_title=label)
    legend_below(fig, 320)
    fig.update_xaxes(dtick=1 if max(len(t.x) for t in fig.data) <= 20 else None)
    if metric == "accuracy":
        fig.update_yaxes(range=[0, 1.02])
    return fig


def unfreeze_epochs(m: pd.DataFrame | None) -> list[tuple[int, int, int]]:
    """(epoch, trainable parameters before, after) wherever a run's trainable parameter count went up."""
    if m is None or not len(m) or "trainable_params" not in m:
        return []
    counts = m[["epoch", "trainable_params"]].dropna().to_numpy(dtype=float)
    return [(int(e), int(prev), int(n)) for (_, prev), (e, n) in itertools.pairwise(counts) if n > prev]


def _fmt_int(v: float) -> str:
    return numbers.cell(v, "count")


def label_positions(x: Iterable[float]) -> list[str]:
    """Where each point's label goes: neighbours along x alternate above and below, so close points' labels do
    not print over each other."""
    order = np.argsort(np.asarray(list(x), dtype=float), kind="stable")
    out = [""] * len(order)
    for rank, i in enumerate(order):
        out[i] = "top center" if rank % 2 == 0 else "bottom center"
    return out


def log_range(values: Iterable[float], pad: float = 0.5) -> list[float]:
    """A log axis's range (in decades) that holds every value with room for the labels at both ends."""
    v = np.log10(np.asarray(list(values), dtype=float))
    return [float(v.min()) - pad, float(v.max()) + pad]


def tradeoff_figure(table: pd.DataFrame, y: str = "test_accuracy") -> go.Figure:
    """Trainable parameters (log x) against a test metric, coloured by seconds per epoch: cost vs benefit.

    Every test metric is a share, so the y axis is 0-100% whatever the runs (one run: no -0.5 to 1.5 axis); the
    colour bar appears only when the seconds per epoch differ (one run: its seconds are in its label)."""
    label = TEST_METRIC_LABELS.get(y, y)
    df = table[(pd.to_numeric(table["trainable_params"], errors="coerce") > 0) & table[y].notna()]
    if not len(df):
        return _empty(f"No chosen run has both a parameter count and a {label.lower()} yet.", label)
    secs = df["sec_per_epoch"].astype(float)
    text = point_labels(df)
    custom = np.stack([df["run_id"], text, [_fmt_int(v) for v in df["trainable_params"]],
                       [numbers.seconds(s) for s in secs]], axis=1)
    spread = secs.notna().sum() >= 2 and secs.max() > secs.min()
    marker = (dict(color=secs, colorscale="Viridis", showscale=True, colorbar=dict(title="seconds<br>per epoch"))
              if spread else dict(color="#1f5fa8"))
    if not spread:
        text = [f"{t} · {c[3]} per epoch" if not math.isnan(s) else t for t, c, s in zip(text, custom, secs)]
    fig = go.Figure(go.Scatter(
        x=df["trainable_params"].astype(float), y=df[y].astype(float), mode="markers+text", text=text,
        textposition=label_positions(df["trainable_params"]), customdata=custom, name=label, cliponaxis=False,
        textfont_size=11, marker=dict(size=16, line=dict(width=1, color="black"), **marker),
        hovertemplate=("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>trainable parameters %{customdata[2]}<br>"
                       + label.lower() + f" %{{y:{numbers.d3(y)}}}<br>%{{customdata[3]}} per epoch<extra></extra>")))
    fig.update_layout(title=f"Cost vs benefit: trainable parameters vs {label.lower()}", height=460,
                      xaxis_title="Trainable parameters (log scale)", yaxis_title=label,
                      margin=dict(l=70, r=40 if not spread else 20, t=60, b=60))
    fig.update_xaxes(type="log", range=log_range(df["trainable_params"]))
    fig.update_yaxes(range=[0, 1.08], tickformat=".0%")
    return fig


def bar_figure(table: pd.DataFrame, column: str, title: str, log: bool = False,
               colors: dict[str, str] | None = None) -> go.Figure:
    """One bar per run for a numeric table column (e.g. trainable_params, sec_per_epoch)."""
    df = table[table[column].notna()]
    if not len(df):
        return _empty("Nothing to show yet.", title)
    colors = colors or run_colors(table["run_id"])
    values = df[column].astype(float)
    names = df["name"].tolist() if "name" in df else words.run_names(  # unique, as the table's
        df["run_id"].tolist(), [bool(ex) for ex in (df["example"] if "example" in df else [False] * len(df))])
    fig = go.Figure(go.Bar(
        x=names, y=values, marker_color=[colors.get(r) for r in df["run_id"]],
        text=[f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values], textposition="outside",
        hovertemplate="%{x}<br>" + title + " %{y:,}<extra></extra>"))
    fig.update_layout(title=title, yaxis_title=title, height=380, showlegend=False)
    if log:
        fig.update_yaxes(type="log")
    return fig


def confusion_figure(test: dict) -> go.Figure:
    """The saved test confusion matrix as a heatmap with counts (rows: true class, columns: predicted)."""
    cm, classes = test.get("confusion"), test.get("classes")
    if not cm or not classes:
        raise RunError("This run's test results have no confusion matrix.")
    z = np.asarray(cm, dtype=int)
    fig = go.Figure(go.Heatmap(z=z, x=list(classes), y=list(classes), colorscale="Blues", texttemplate="%{z}",
                               hovertemplate="true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>"))
    fig.update_layout(title="Confusion matrix (test images)", xaxis_title="Predicted", yaxis_title="True",
                      height=380)
    fig.update_yaxes(autorange="reversed")
    return fig


def _operating_point(cm: np.ndarray, c: int) -> tuple[float, float]:
    """(false positive rate, true positive rate) of class `c` at the decision rule the run actually used."""
    pos, tp = cm[c].sum(), cm[c, c]
    neg, fp = cm.sum() - pos, cm[:, c].sum() - cm[c, c]
    return (fp / neg if neg else math.nan), (tp / pos if pos else math.nan)


def roc_figure(test: dict) -> go.Figure:
    """ROC of the test split (binary; one-vs-rest per class beyond two) with the run's operating point marked."""
    classes, y_true, probs = test.get("classes") or [], test.get("y_true"), test.get("probs")
    if not y_true or not probs or len(classes) < 2:
        raise RunError("This run's test results do not include per-image scores, so no ROC curve can be drawn.")
    y, p, cm = np.asarray(y_true, int), np.asarray(probs, float), np.asarray(test.get("confusion"), int)
    threshold = test.get("threshold")
    rule = f"threshold {numbers.percent(threshold)}" if threshold is not None else "highest probability"
    colors = run_colors(classes)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", hoverinfo="skip",
                             line=dict(color="grey", dash="dot")))
    for c in ([1] if len(classes) == 2 else range(len(classes))):
        if not ((y == c).any() and (y != c).any()):
            continue  # a class absent from the test split has no ROC
        fpr, tpr, _ = metrics.roc_curve(y == c, p[:, c])
        auc = metrics.binary_auroc(y == c, p[:, c])
        name = classes[c] if len(classes) == 2 else f"{classes[c]} vs rest"
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{name} (AUROC {auc:.3f})",
                                 line=dict(color=colors[classes[c]]),
                                 hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}<extra>" + name + "</extra>"))
        if cm.shape == (len(classes), len(classes)):
            ox, oy = _operating_point(cm, c)
            fig.add_trace(go.Scatter(x=[ox], y=[oy], mode="markers", name=f"{name}: operating point ({rule})",
                                     marker=dict(size=13, symbol="x", color=colors[classes[c]]),
                                     hovertemplate="operating point<br>FPR %{x:.3f}<br>TPR %{y:.3f}<extra></extra>"))
    positive = classes[1] if len(classes) == 2 else "each class"
    fig.update_layout(title=f"ROC on test images (positive: {positive})", height=420,
                      xaxis_title="False positive rate (1 - specificity)",
                      yaxis_title="True positive rate (sensitivity)", legend=LEGEND_BELOW)
    # 0-1 on both axes whatever the width: a square plot area shrinks its domain instead of widening the range
    fig.update_xaxes(range=[0, 1], constrain="domain")
    fig.update_yaxes(range=[0, 1], scaleanchor="x", scaleratio=1, constrain="domain")
    fig.update_traces(cliponaxis=False)
    return fig


def probability_figure(classes: tuple[str, ...] | list[str], probs: np.ndarray, predicted: int,
                       threshold: float | None = None) -> go.Figure:
    """A horizontal bar per class, the verdict highlighted; with two classes and a threshold, the decision cut
    on p(class 1) is marked on that class's bar, so the verdict reads off the bar."""
    colours = ["#1f5fa8" if i == predicted else "#a7b8cc" for i in range(len(classes))]
    fig = go.Figure(go.Bar(x=[float(p) for p in probs], y=list(classes), orientation="h", marker_color=colours,
                           text=[numbers.percent(p) for p in probs], textposition="auto",
                           hovertemplate="%{y}: %{x:.1%}<extra></extra>"))
    marked = threshold is not None and len(classes) == 2 and 0 <= threshold <= 1
    if marked:
        fig.add_shape(type="line", x0=threshold, x1=threshold, y0=0.5, y1=1.5, name="decision threshold",
                      line={"color": THRESHOLD_COLOUR, "width": 3, "dash": "dash"})
        # The label sits above the plot area, outside every bar, on a white box with a red edge: legible whatever
        # the bar's colour (on the bar, red on dark blue could not be read).
        fig.add_annotation(x=threshold, xref="x", y=1, yref="paper", yanchor="bottom", showarrow=False,
                           text=f"threshold {numbers.percent(threshold)}", font={"color": THRESHOLD_COLOUR},
                           bgcolor="white", bordercolor=THRESHOLD_COLOUR, borderwidth=1, borderpad=2)
    fig.update_layout(xaxis={"range": [0, 1], "tickformat": ".0%", "title": "Probability (calibrated)"},
                      yaxis={"autorange": "reversed"}, height=100 + 40 * len(classes) + (24 if marked else 0),
                      margin={"l": 10, "r": 10, "t": 44 if marked else 20, "b": 10}, showlegend=False)
    return fig


def reliability_figure(test: dict) -> go.Figure:
    """Reliability diagram of a run's test split before and after calibration (top label, 15 bins), with ECE."""
    from cxrdemo.model import calibration

    y = np.asarray(test.get("y_true") or [])
    if not len(y) or not test.get("calibrated_probs"):
        return _empty("No calibrated test probabilities: train again, or add them with `calibrate`.",
                      "Reliability")
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#888"},
                               name="perfectly calibrated"))
    for key, name, colour in (("probs", "before", "#a7b8cc"), ("calibrated_probs", "after", "#1f5fa8")):
        p = np.asarray(test[key], dtype=np.float64)
        p = p / p.sum(axis=1, keepdims=True)  # rounded to 6 decimals on disk
        curve = calibration.reliability_curve(p, y)
        ece = calibration.expected_calibration_error(p, y)
        fig.add_trace(go.Scatter(x=curve["confidence"], y=curve["accuracy"], mode="lines+markers", name=
                                 f"{name} calibration (ECE {ece:.3f})", line={"color": colour},
                                 customdata=curve["count"], hovertemplate="confidence %{x:.2f}: accuracy %{y:.2f} "
                                 "(%{customdata} images)<extra></extra>"))
    fig.update_layout(xaxis={"range": [0, 1], "title": "Confidence in the top class"},
                      yaxis={"range": [0, 1], "title": "Share correct"}, height=360, title="Reliability",
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig
