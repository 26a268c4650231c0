"""Each lesson's result view from its finished runs: a table, a figure and a headline sentence.

Hooks for later (the watch-it-learn issue): a lesson that should show per-epoch probes or the error gallery
reads them here from the run folder (probes/epoch-NNN.npz, test_predictions.csv) and adds them to LessonResult.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cxrdemo.model import metrics
from cxrdemo.model.metrics import predict_labels
from cxrdemo.model.paired import auroc_gap, leakage_gap, paired_gap  # noqa: F401 (the lessons' gaps; tests reach them here)
from cxrdemo.runs import store as runs
from cxrdemo.views import numbers, plots
from cxrdemo.views.text import escape_markdown
from cxrdemo.views.lessons import Lesson, lesson_runs, recipes

@dataclass(frozen=True)
class Effect:
    """The lesson's headline effect as numbers: what is measured, its value and 95% interval (shares: 0.07 = 7
    points)."""

    what: str
    value: float
    low: float
    high: float


@dataclass
class LessonResult:
    """What the page shows when a lesson's runs have finished."""

    headline: str
    table: pd.DataFrame
    figures: list[go.Figure] = field(default_factory=list)
    effect: Effect | None = None  # the headline's number (`lessons results --json`); None until the runs finish
    # Hook: the probe timelapse / error gallery of chosen runs, once runs write them (watch-it-learn issue).
    gallery_runs: list[str] = field(default_factory=list)

    def shown_table(self) -> pd.DataFrame:
        """The table as the page shows it: every column in one precision for its kind, '—' where a run has none."""
        return numbers.shown_table(self.table, {c: column_kind(c) for c in self.table.columns})


def column_kind(column: str) -> str:
    """How a lesson table's column is written (numbers.cell): shares as percentages, gaps in points, AUROC as a
    score, images, epochs and parameters as counts, seconds with one decimal."""
    if "AUROC" in column:
        return "score"
    if "gap" in column:
        return "points"
    if column in ("training images", "validation images", "epochs to best", "trainable parameters", "films"):
        return "count"
    if "seconds" in column:
        return "seconds"
    if any(w in column for w in ("accuracy", "micro-recall", "interval", "called", "coverage", "answering")):
        return "percent"
    return "plain"


def _test(info: runs.RunInfo) -> dict:
    return runs.read_test_metrics(info.path) or {}


def _n_train(info: runs.RunInfo) -> float:
    totals = (info.meta.get("dataset") or {}).get("totals") or {}
    return float(totals.get("train", math.nan))


def _metric_rows(info: runs.RunInfo) -> pd.DataFrame:
    return runs.read_metrics(info.path)


def _base_rows(lesson: Lesson, infos: list[runs.RunInfo]) -> list[tuple[str, str, runs.RunInfo | None, dict]]:
    found = lesson_runs(lesson, infos)
    return [(r.key, r.label, found.get(r.key), _test(found[r.key]) if r.key in found else {})
            for r in recipes(lesson)]


def _correct(test: dict, probs_key: str | None = None) -> np.ndarray:
    """Per test image: did the run's decision rule get it right (`probs_key`: the marked copies' results)."""
    probs = (test.get(probs_key) or {}).get("probs") if probs_key else test.get("probs")
    return predict_labels(np.asarray(probs), test.get("threshold")) == np.asarray(test["y_true"])


def accuracy_estimate(test: dict) -> metrics.Estimate:
    """The test accuracy with its 95% interval, computed as the model card computes it (metrics.metric_intervals)."""
    probs = np.asarray(test["probs"], dtype=np.float64)
    classes = test.get("classes") or list(range(probs.shape[1]))
    return metrics.metric_intervals(test["y_true"], probs, classes, test.get("threshold"), keys=("accuracy",))[
        "accuracy"]


def verdict(lo: float, hi: float) -> str:
    """Words for a 95% interval of a difference: does it exclude zero?"""
    if lo > 0 or hi < 0:
        return "the interval excludes zero"
    return "not significant: the interval includes zero, so these test images cannot show a difference"


def _interval(lo: float, hi: float) -> str:
    return numbers.difference_interval("accuracy", lo, hi)


def _estimate_words(e: metrics.Estimate, test: dict) -> str:
    """'95% interval 66.0–83.0%', or the count in words where the share is 0 or 1 (numbers.estimate)."""
    if e.exact:
        return numbers.estimate(e, [escape_markdown(str(c)) for c in test.get("classes") or ()])
    return f"95% interval {numbers.interval(e.key, e.low, e.high)}"


def _has_probs(test: dict) -> bool:
    return bool(test.get("probs")) and bool(test.get("y_true"))


# ---------------------------------------------------------------- lesson 1

def transfer_result(lesson: Lesson, infos: list[runs.RunInfo]) -> LessonResult:
    """Accuracy (with its interval) vs number of training images, one line per start; the learning curves."""
    rows, correct = [], {}
    for key, label, info, test in _base_rows(lesson, infos):
        lo = hi = math.nan
        if _has_probs(test):
            correct[key] = _correct(test)
            found = accuracy_estimate(test)
            lo, hi = found.low, found.high
        rows.append({"recipe": label, "start": key.rsplit("-", 1)[0], "share": key.rsplit("-", 1)[1],
                     "training images": _n_train(info) if info else math.nan,
                     "test accuracy": test.get("accuracy", math.nan), "95% interval low": lo,
                     "95% interval high": hi, "test AUROC": test.get("auroc", math.nan),
                     "run": info.run_id if info else ""})
    df = pd.DataFrame(rows)
    fig = go.Figure()
    for start, part in df.groupby("start", sort=False):
        part = part.dropna(subset=["test accuracy"]).sort_values("training images")
        fig.add_trace(go.Scatter(x=part["training images"], y=part["test accuracy"], mode="lines+markers",
                                 name=start, error_y={"type": "data", "symmetric": False,
                                                      "array": part["95% interval high"] - part["test accuracy"],
                                                      "arrayminus": part["test accuracy"] - part["95% interval low"]}))
    fig.update_layout(title="Test accuracy vs number of training images (bars: 95% interval)",
                      xaxis_title="Training images", yaxis_title="Test accuracy", yaxis_range=[0, 1.02], height=380)
    lines, effect, tests = [], None, {key: t for key, _, _, t in _base_rows(lesson, infos)}
    for share in df["share"].unique():
        gap = _auroc_gap(tests.get(f"demo-all-{share}", {}), tests.get(f"scratch-{share}", {}))
        if gap is None:
            continue  # paired by test image: both runs are tested on the lesson's fixed test split
        acc = paired_gap(correct[f"demo-all-{share}"], correct[f"scratch-{share}"])
        effect = effect or Effect(f"test AUROC, demo model minus scratch, {share}% of the training images",
                                  *gap)  # the smallest share: where the lesson's claim is
        lines.append(f"{share}% of the training images: AUROC {numbers.difference('auroc', gap[0])} "
                     f"({numbers.difference_interval('auroc', *gap[1:])}; {verdict(*gap[1:])}); accuracy "
                     f"{numbers.points(acc[0])} ({_interval(*acc[1:])}).")
    headline = ("Starting from the demo model instead of from scratch changes the test results by: " + " ".join(lines)
                if lines else "The runs from scratch and from the demo model have not both finished yet.")
    done = [i for _, _, i, t in _base_rows(lesson, infos) if i is not None and t]
    return LessonResult(headline, df, [fig, plots.curves_figure(done, "loss")], effect=effect)


# ---------------------------------------------------------------- lesson 2

def _auroc_gap(a: dict, b: dict) -> tuple[float, float, float] | None:
    """AUROC of run A minus run B on the same test images, with its paired interval (None when not comparable)."""
    if not (_has_probs(a) and _has_probs(b)) or a["y_true"] != b["y_true"]:
        return None
    return auroc_gap(np.asarray(a["y_true"]), np.asarray(a["probs"])[:, 1], np.asarray(b["probs"])[:, 1])


def freeze_result(lesson: Lesson, infos: list[runs.RunInfo]) -> LessonResult:
    """What each freeze level buys and costs: trainable parameters, seconds per epoch, test AUROC and its paired gap
    against training every layer; the chart of parameters against AUROC."""
    found = lesson_runs(lesson, infos)
    full = _test(found["cnn5-none"]) if "cnn5-none" in found else {}
    rows = []
    for key, label, info, test in _base_rows(lesson, infos):
        m = _metric_rows(info) if info else pd.DataFrame()
        gap = _auroc_gap(test, full) if key != "cnn5-none" else None
        rows.append({"key": key, "recipe": label, "trainable parameters": float(m["trainable_params"].iloc[-1])
                     if len(m) else math.nan, "seconds per epoch": float(m["seconds"].mean()) if len(m) else math.nan,
                     "test AUROC": test.get("auroc", math.nan), "AUROC gap vs every layer": gap[0] if gap else math.nan,
                     "AUROC gap 95% low": gap[1] if gap else math.nan, "AUROC gap 95% high": gap[2] if gap else math.nan,
                     "test micro-recall": test.get("micro_recall", math.nan),
                     "epochs to best": test.get("best_epoch", math.nan), "run": info.run_id if info else ""})
    df = pd.DataFrame(rows)
    ok = df.dropna(subset=["test AUROC", "trainable parameters"])
    short = [f"{k.split('-')[0]} · freeze {k.split('-', 1)[1]}" for k in ok["key"]]  # the recipe, without 'demo'
    fig = go.Figure(go.Scatter(x=ok["trainable parameters"], y=ok["test AUROC"], text=short,
                               customdata=ok["recipe"], mode="markers+text", cliponaxis=False, textfont_size=11,
                               textposition=plots.label_positions(ok["trainable parameters"]),
                               hovertemplate="%{customdata}<br>%{x:,} trainable parameters<br>test AUROC "
                                             "%{y:.3f}<extra></extra>"))
    fig.update_layout(title="Trade-off: trainable parameters vs test AUROC", xaxis_type="log",
                      xaxis_title="Trainable parameters (log)", yaxis_title="Test AUROC",
                      yaxis_range=[min(0.4, float(ok["test AUROC"].min()) - 0.05) if len(ok) else 0.4, 1.02],
                      height=420, margin={"l": 70, "r": 40, "t": 60, "b": 60})
    if len(ok):
        fig.update_xaxes(range=plots.log_range(ok["trainable parameters"]))
    rows_by = df.set_index("key")
    effect, lines = None, []
    if {"cnn5-none", "cnn5-head"} <= set(ok["key"]) and not math.isnan(rows_by.loc["cnn5-head", "AUROC gap vs every layer"]):
        h, f = rows_by.loc["cnn5-head"], rows_by.loc["cnn5-none"]
        gap, lo, hi = h["AUROC gap vs every layer"], h["AUROC gap 95% low"], h["AUROC gap 95% high"]
        effect = Effect("test AUROC, head only minus every layer", gap, lo, hi)
        # Seconds per epoch stay in the table: measured on a shared machine, they carry its load as well.
        lines.append(f"Training only the head trains {int(h['trainable parameters']):,} parameters instead of "
                     f"{int(f['trainable parameters']):,} and computes the trunk's features only once; it costs "
                     f"{numbers.difference('auroc', gap)} test AUROC ({numbers.difference_interval('auroc', lo, hi)}; "
                     f"{verdict(lo, hi)}).")
    middle = ok[ok["key"].isin([f"cnn5-{k}" for k in "1234"])]
    if len(middle):
        lines.append(f"Freezing groups 1-4 still trains {int(middle['trainable parameters'].min()):,}-"
                     f"{int(middle['trainable parameters'].max()):,} parameters: most of cnn5's weights sit in its last "
                     "group.")
    return LessonResult(" ".join(lines) or "No freeze level has finished yet.", df.drop(columns="key"), [fig],
                        effect=effect)


# ---------------------------------------------------------------- lesson 3

def _called(test: dict, k: int) -> float:
    probs, threshold = test.get("probs"), test.get("threshold")
    if not probs:
        return math.nan
    return float(np.mean(predict_labels(np.asarray(probs), threshold) == k))


def shortcut_result(lesson: Lesson, infos: list[runs.RunInfo]) -> LessonResult:
    """Accuracy on clean vs marked copies of the same test images, the gap with its paired interval, and how often
    each model says VIRUS on them."""
    rows, gaps, calls = [], {}, {}
    for _, label, info, test in _base_rows(lesson, infos):
        marked = test.get("marked") or {}
        k = list(test.get("classes") or ["BACTERIA", "VIRUS"]).index("VIRUS") if test else 1
        marked_called = _called({**marked, "threshold": test.get("threshold")}, k) if marked else math.nan
        gap = lo = hi = math.nan
        if _has_probs(test) and marked.get("probs") and len(marked["probs"]) == len(test["y_true"]):
            gap, lo, hi = paired_gap(_correct(test), _correct(test, "marked"))  # the same images, tag or not
            gaps[label] = (gap, lo, hi)
            said = [predict_labels(np.asarray(p), test.get("threshold")) == k for p in (marked["probs"], test["probs"])]
            calls[label] = paired_gap(*said)  # how much more often the tag makes it say VIRUS, same images
        rows.append({"recipe": label, "clean accuracy": test.get("accuracy", math.nan),
                     "marked accuracy": marked.get("accuracy", math.nan) if marked else math.nan,
                     "gap (clean − marked)": gap, "gap 95% low": lo, "gap 95% high": hi,
                     "called VIRUS (clean)": _called(test, k), "called VIRUS (marked)": marked_called,
                     "run": info.run_id if info else ""})
    df = pd.DataFrame(rows)
    fig = go.Figure([go.Bar(name=col, x=df["recipe"], y=df[col]) for col in ("clean accuracy", "marked accuracy")])
    fig.update_layout(barmode="group", title="Test accuracy on clean vs marked copies", yaxis_range=[0, 1.02],
                      height=380)
    last = df.iloc[-1]
    gap = last["clean accuracy"] - last["marked accuracy"]
    shift = calls.get(last["recipe"])
    headline = (f"The model trained with the marker on every VIRUS image: clean {numbers.percent(last['clean accuracy'])}, "
                f"marked {numbers.percent(last['marked accuracy'])} (gap {numbers.points(gap)}"
                + (f", {_interval(*gaps[last['recipe']][1:])}; {verdict(*gaps[last['recipe']][1:])}"
                   if last["recipe"] in gaps else "")
                + f"); it calls {numbers.percent(last['called VIRUS (marked)'])} of marked images VIRUS"
                + (f" and {numbers.percent(last['called VIRUS (clean)'])} of the same images without the tag "
                   f"({numbers.points(shift[0])}, {_interval(*shift[1:])}; {verdict(*shift[1:])})" if shift else "")
                + ". Accuracy alone can hide a shortcut on a balanced test: watch what it calls the images."
                if not math.isnan(gap) else "The marked runs have not finished yet.")
    effect = Effect("share called VIRUS, marked minus clean copies of the same test images", *shift) if shift else None
    return LessonResult(headline, df, [fig], gallery_runs=[r for r in df["run"] if r], effect=effect)


# ---------------------------------------------------------------- lesson 4

def _val_at_best(info: runs.RunInfo, test: dict) -> tuple[float, int]:
    m = _metric_rows(info)
    best = m[m["epoch"] == test.get("best_epoch")]
    n_val = int(((info.meta.get("dataset") or {}).get("totals") or {}).get("val", 0))
    return (float(best["val_acc"].iloc[0]) if len(best) else math.nan), n_val


def leakage_result(lesson: Lesson, infos: list[runs.RunInfo]) -> LessonResult:
    """Reported validation accuracy vs accuracy on unseen patients, per split, with the gap's interval."""
    rows, pairs = [], {"image": [], "patient": []}
    for key, label, info, test in _base_rows(lesson, infos):
        val, n_val = _val_at_best(info, test) if (info and test) else (math.nan, 0)
        rows.append({"recipe": label, "validation accuracy (reported)": val,
                     "accuracy on unseen patients": test.get("accuracy", math.nan),
                     "validation images": n_val, "run": info.run_id if info else ""})
        if test.get("probs") and not math.isnan(val) and n_val:
            pairs[key.split("-")[0]].append((val, n_val, _correct(test)))
    df = pd.DataFrame(rows)
    lines, effect = [], None
    for split, found in pairs.items():
        if found:
            gap, lo, hi = leakage_gap(found)
            if split == "image":
                effect = Effect("validation accuracy minus accuracy on unseen patients, split by image", gap, lo, hi)
            said = ("clearly above zero: validation flatters the model" if lo > 0 else
                    "below zero: validation understates the model" if hi < 0 else
                    "the interval includes zero: no sign that validation flatters the model")
            lines.append(f"Split by {split}: validation overstates unseen-patient accuracy by "
                         f"{numbers.points(gap)} ({_interval(lo, hi)}; {said}).")
    fig = go.Figure([go.Bar(name=col, x=df["recipe"], y=df[col])
                     for col in ("validation accuracy (reported)", "accuracy on unseen patients")])
    fig.update_layout(barmode="group", title="What validation reports vs unseen patients", yaxis_range=[0, 1.02],
                      height=380)
    return LessonResult(" ".join(lines) or "The runs have not finished yet.", df, [fig], effect=effect)


RESULTS = {"transfer": transfer_result, "freeze": freeze_result, "shortcut": shortcut_result,
           "leakage": leakage_result}


def lesson_result(lesson: Lesson, infos: list[runs.RunInfo]) -> LessonResult:
    """The result view made for `lesson` from the runs in the store."""
    return RESULTS[lesson.key](lesson, infos)
