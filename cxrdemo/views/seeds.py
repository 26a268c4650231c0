"""Runs that differ only in their seed, grouped: mean ± standard deviation in a table, a mean curve with a band.

One seed's result is one draw; the spread over seeds says how much of a difference between recipes is luck.
"""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cxrdemo.runs import store as runs
from cxrdemo.views.compare import TEST_COLUMNS

SUMMARY_COLUMNS = ("best_val_acc", *TEST_COLUMNS)


def recipe_key(config: dict) -> str:
    """The recipe without its seed, as canonical text: runs with the same key differ only in seed."""
    return json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True, default=str)


def seed_groups(infos: list[runs.RunInfo]) -> list[list[runs.RunInfo]]:
    """Groups of two or more readable runs whose recipes differ only in seed, in first-run order."""
    groups: dict[str, list[runs.RunInfo]] = {}
    for info in infos:
        if not info.damaged and info.config:
            groups.setdefault(recipe_key(info.config), []).append(info)
    return [g for g in groups.values() if len(g) > 1]


def _mean_sd(values: pd.Series) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if not len(v):
        return "—"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f} (one run)"


def seed_table(table: pd.DataFrame, groups: list[list[runs.RunInfo]]) -> pd.DataFrame:
    """One row per seed group: the recipe, the seeds, and each metric as 'mean ± sd' over the seeds."""
    rows = []
    for group in groups:
        ids = [i.run_id for i in group]
        part = table[table["run_id"].isin(ids)]
        first = group[0].config
        rows.append({"runs": ", ".join(ids), "seeds": ", ".join(str(i.config.get("seed")) for i in group),
                     "backbone": first.get("backbone", ""), "init": first.get("init", ""),
                     "freeze": str(first.get("freeze", "")),
                     **{c: _mean_sd(part[c]) for c in SUMMARY_COLUMNS if c in part}})
    return pd.DataFrame(rows)


def band_figure(groups: list[list[runs.RunInfo]], column: str = "val_acc",
                colors: dict[str, str] | None = None) -> go.Figure:
    """Per group, the mean of `column` over its seeds per epoch, with a band of ± one standard deviation."""
    fig = go.Figure()
    for n, group in enumerate(groups):
        frames = [runs.read_metrics(i.path)[["epoch", column]].dropna() for i in group]
        frames = [f.set_index("epoch")[column] for f in frames if len(f)]
        if not frames:
            continue
        both = pd.concat(frames, axis=1)
        mean, sd = both.mean(axis=1), both.std(axis=1, ddof=1).fillna(0.0)
        cfg = group[0].config
        name = html.escape(f"{cfg.get('backbone')} · {cfg.get('init')} · freeze {cfg.get('freeze')} "
                           f"({len(frames)} seeds)")
        color = (colors or {}).get(group[0].run_id) or _color(n)
        x = mean.index.to_numpy()
        fig.add_trace(go.Scatter(x=np.r_[x, x[::-1]], y=np.r_[(mean + sd).to_numpy(), (mean - sd).to_numpy()[::-1]],
                                 fill="toself", fillcolor=color, opacity=0.2, line_width=0, hoverinfo="skip",
                                 showlegend=False, legendgroup=name))
        fig.add_trace(go.Scatter(x=x, y=mean.to_numpy(), mode="lines+markers", name=name, legendgroup=name,
                                 line_color=color, customdata=sd.to_numpy(),
                                 hovertemplate="epoch %{x}: %{y:.3f} ± %{customdata:.3f}<extra></extra>"))
    label = {"val_acc": "Validation accuracy", "val_loss": "Validation loss"}.get(column, column)
    fig.update_layout(title=f"{label}: mean over seeds, band ± 1 sd", xaxis_title="Epoch", yaxis_title=label,
                      height=380)
    return fig


def _color(n: int) -> str:
    from plotly.colors import qualitative

    return qualitative.Plotly[n % len(qualitative.Plotly)]

