"""Runs -> pandas tables for the Compare page: one row per run, class-set groups, CSV export."""

from __future__ import annotations

import io
import math
from datetime import datetime

import pandas as pd

from cxrdemo import paths
from cxrdemo.config import FreezeLevel
from cxrdemo.data.scan import dataset_name, relative_path
from cxrdemo.errors import CxrError, RunError
from cxrdemo.model import backbones, checkpoint
from cxrdemo.runs import store as runs
from cxrdemo.views import numbers, words
from cxrdemo.views.chance import chance_sentence
from cxrdemo.views.host_paths import Roots, without_host_paths
from cxrdemo.views.text import escape_markdown, safe_csv_cell

TEST_KEYS = ("accuracy", "precision", "recall", "f1", "auroc", "sensitivity", "specificity")
TEST_COLUMNS = tuple(f"test_{k}" for k in TEST_KEYS)
TABLE_COLUMNS = ("name", "run_id", "example", "status", "problem", "backbone", "init", "freeze", "head", "epochs_run", "epochs_planned",
                 "best_val_acc", "epochs_to_best", *TEST_COLUMNS, "total_params", "trainable_params",
                 "trainable_at_start", "params_note", "sec_per_epoch", "arithmetic", "dataset", "classes", "n_classes",
                 "started", "recipe")
UNKNOWN_CLASSES = "(classes not known yet)"
EXAMPLE = words.EXAMPLE
# The compact table: what a projector at 1400 px shows without scrolling sideways (about 930 px beside the
# sidebar): column -> width in pixels. Its run is named short (words.run_name), its recipe is one cell.
COMPACT_WIDTHS = {"name": 214, "recipe": 200, "status": 78, "epochs_run": 52, "test_accuracy": 64, "test_auroc": 58,
                  "test_sensitivity": 58, "test_specificity": 58, "trainable_params": 80, "sec_per_epoch": 60}
COMPACT_COLUMNS = tuple(COMPACT_WIDTHS)
PROJECTOR_TABLE_PX = 930  # the table's width at 1400 px with the sidebar open (measured in the browser test)
# What the trade-off chart may put on its y axis: column -> label a clinician reads.
TEST_METRIC_LABELS = {"test_accuracy": "Test accuracy", "test_recall": "Test recall (macro)",
                      "test_sensitivity": "Test sensitivity", "test_specificity": "Test specificity",
                      "test_f1": "Test F1 (macro)", "test_auroc": "Test AUROC"}


def run_classes(info: runs.RunInfo, test: dict | None = None) -> list[str]:
    """The class names a run was trained on: from its dataset scan, else its test metrics; [] when unknown."""
    classes = (info.meta.get("dataset") or {}).get("classes") if isinstance(info.meta.get("dataset"), dict) else None
    if not classes and test:
        classes = test.get("classes")
    return [str(c) for c in classes] if isinstance(classes, list) else []


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _params(cfg: dict, n_classes: int, epochs_run: int) -> tuple[float, float, float, str]:
    """(total, trainable at the last epoch run, trainable at epoch 1, note) from the registry's counts."""
    if not n_classes:
        return math.nan, math.nan, math.nan, ""
    name, head = cfg.get("backbone", ""), cfg.get("head", "linear")
    # A run that has not trained yet is described by its plan: the phase it would end in.
    planned = _num(cfg.get("epochs"))
    last_epoch = epochs_run or (1 if math.isnan(planned) else int(planned))
    try:
        freeze = FreezeLevel.parse(str(cfg.get("freeze", "none")))
        total, last = backbones.param_counts(name, n_classes, freeze, head, max(1, last_epoch))
        _, first = backbones.param_counts(name, n_classes, freeze, head, 1)
    except (CxrError, TypeError, ValueError):
        return math.nan, math.nan, math.nan, ""
    note = words.gradual_note(freeze, first, total)
    return float(total), float(last), float(first), note


def run_row(info: runs.RunInfo, roots: Roots = None) -> dict:
    """One table row for a run; a damaged run gets its reason and NaN numbers, never an exception. `roots` (a
    classroom): a failure's sentence names the data folder inside them only."""
    row: dict = {c: math.nan for c in TABLE_COLUMNS}
    row.update(run_id=info.run_id, example=info.example, status=info.state, problem=info.damaged or "",
               params_note="", backbone="",
               init="", freeze="", head="", dataset="", classes="", started=pd.NaT, arithmetic="")
    if info.damaged:
        return row
    cfg, status = info.config, info.status
    if status.get("state") in ("failed", "interrupted", "cancelled") and status.get("error"):
        row["problem"] = without_host_paths(str(status["error"]), [str(cfg.get("data") or "")], roots)
    m = runs.read_metrics(info.path)
    test = runs.read_test_metrics(info.path) or card_metrics(info.path)
    chance = chance_sentence(test)
    if chance and not row["problem"]:
        row["problem"] = f"The model {chance}."
    classes = run_classes(info, test)
    dataset = info.meta.get("dataset") if isinstance(info.meta.get("dataset"), dict) else {}
    epochs_run = int(m["epoch"].notna().sum())
    total, last, first, note = _params(cfg, len(classes), epochs_run)
    started = _num(status.get("started") or info.meta.get("created"))
    row.update(backbone=str(cfg.get("backbone", "")), init=str(cfg.get("init", "")), freeze=str(cfg.get("freeze", "")),
               head=str(cfg.get("head", "")), arithmetic=arithmetic_of(info.meta),
               epochs_run=epochs_run, epochs_planned=_num(cfg.get("epochs")),
               total_params=total, trainable_params=last, trainable_at_start=first, params_note=note,
               dataset=dataset_name(str(dataset.get("name") or dataset.get("root") or cfg.get("data", ""))),
               classes=", ".join(classes) if classes else UNKNOWN_CLASSES, n_classes=len(classes) or math.nan,
               started=pd.Timestamp(datetime.fromtimestamp(started)) if not math.isnan(started) else pd.NaT)
    if epochs_run:
        row["best_val_acc"] = float(m["val_acc"].max())
        losses = m["val_loss"]
        if losses.notna().any():
            row["epochs_to_best"] = int(m.loc[losses.idxmin(), "epoch"])
        if m["seconds"].notna().any():
            row["sec_per_epoch"] = float(m["seconds"].mean())
    if test:
        for key, col in zip(TEST_KEYS, TEST_COLUMNS):
            row[col] = _num(test.get(key))
    return row


def card_metrics(run_dir) -> dict | None:
    """The first held-out evaluation recorded in a model card's evaluation.json (the shipped demo model), or None."""
    try:
        first = (runs.read_json(run_dir / "evaluation.json").get("evaluations") or [{}])[0]
    except RunError:
        return None
    return {**first["metrics"], "n": first.get("n")} if isinstance(first.get("metrics"), dict) else None


def demo_reference() -> runs.RunInfo | None:
    """The shipped demo model as a run to compare against (read-only), or None when it is not there."""
    d = paths.demo_run_dir()
    return runs.load_run(d) if checkpoint.has_model(d) else None


def point_labels(table: pd.DataFrame) -> list[str]:
    """Labels that tell runs apart on a chart: the recipe in the form's words, plus the start time when it repeats."""
    def start(init: str) -> str:
        return "fine-tuned" if str(init).startswith("run:") else words.init_words(init)

    examples = table["example"] if "example" in table else [False] * len(table)
    recipes = [("shipped demo model" if run_id == paths.DEMO_RUN_NAME else f"{b} · {start(i)} · freeze {f}")
               + (f" · {EXAMPLE}" if bool(ex) else "")
               for b, i, f, run_id, ex in zip(table["backbone"], table["init"], table["freeze"], table["run_id"],
                                              examples)]
    repeated = {r for r in recipes if recipes.count(r) > 1}
    return [r if r not in repeated else f"{r} · {run_id.split('-')[1] if run_id.count('-') >= 2 else run_id}"
            for r, run_id in zip(recipes, table["run_id"])]


def with_examples(infos: list[runs.RunInfo], shipped: list[runs.RunInfo]) -> list[runs.RunInfo]:
    """The store's runs and the shipped example runs (marked `example`); a run of the store wins an id clash."""
    own = {i.run_id for i in infos}
    return [*infos, *(i for i in shipped if i.run_id not in own)]


DEFAULT_CHOSEN = 6
DEFAULT_EXAMPLE_TAG = "lesson:freeze:"  # a fresh install opens on one lesson's runs: one task, one story


def largest_class_set(run_ids: list[str], by_id: dict[str, runs.RunInfo]) -> list[str]:
    """The runs (order kept) of the class set most of them were trained on (a tie: the set of the newest run), so
    the page opens on runs whose test results can be compared."""
    sets = {r: ", ".join(run_classes(by_id[r]) or run_classes(by_id[r], runs.read_test_metrics(by_id[r].path)))
            for r in run_ids}
    counts = {k: list(sets.values()).count(k) for k in sets.values()}
    if len(counts) <= 1:
        return run_ids
    top = max(counts.values())
    chosen = next(sets[r] for r in reversed(run_ids) if counts[sets[r]] == top)
    return [r for r in run_ids if sets[r] == chosen]


def default_choice(options: list[str], infos: list[runs.RunInfo]) -> list[str]:
    """The runs chosen when the page opens: the user's newest own runs of their largest class set, else one
    lesson's example runs (the freeze lesson: its trade-off chart tells the papers' story), else the newest of
    whatever is there."""
    by_id = {i.run_id: i for i in infos}
    own = [r for r in options if r in by_id and not by_id[r].example and r != paths.DEMO_RUN_NAME]
    if own:
        return largest_class_set(own, by_id)[-DEFAULT_CHOSEN:]
    lesson = [r for r in options if r in by_id and str(by_id[r].config.get("tag") or "").startswith(
        DEFAULT_EXAMPLE_TAG)]
    return (lesson or options)[-DEFAULT_CHOSEN:]


def fresh_runs(root, chosen: list[str], fixed: list[runs.RunInfo]) -> list[runs.RunInfo]:
    """The chosen runs re-read from the store; `fixed` ones (examples, the demo reference) never change."""
    kept = {i.run_id: i for i in fixed if i.run_id in chosen}
    return [*(i for i in runs.list_runs(root) if i.run_id in chosen and i.run_id not in kept), *kept.values()]


def recipe_cell(backbone: str, init: str, freeze: str) -> str:
    """'cnn5 · demo model · freeze 3': a run's recipe in one table cell."""
    return f"{backbone} · {words.init_short(init)} · freeze {freeze}" if backbone else ""


def has_model(info: runs.RunInfo) -> bool:
    """Whether the run has weights to predict or compute heatmaps with (example runs ship none)."""
    return not info.example and not info.damaged and checkpoint.has_model(info.path)


def deletable(table: pd.DataFrame) -> list[str]:
    """Runs the Compare page may offer to delete: never the shipped demo model nor a (read-only) example run."""
    return [r for r, ex in zip(table["run_id"], table["example"]) if r != paths.DEMO_RUN_NAME and not bool(ex)]


def runs_table(infos: list[runs.RunInfo], roots: Roots = None) -> pd.DataFrame:
    """One row per run with recipe, status, curves summary, test metrics, parameters, cost and dataset."""
    df = pd.DataFrame([run_row(i, roots) for i in infos], columns=list(TABLE_COLUMNS))
    for col in ("epochs_run", "epochs_to_best", "epochs_planned", "n_classes", "total_params", "trainable_params",
                "trainable_at_start"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Float64").round(0).astype("Int64")
    df["started"] = pd.to_datetime(df["started"])
    df["name"] = words.run_names(df["run_id"].tolist(), df["example"].astype(bool).tolist())
    df["recipe"] = [recipe_cell(b, i, f) for b, i, f in zip(df["backbone"], df["init"], df["freeze"])]
    return df


def filter_table(df: pd.DataFrame, datasets=(), backbone_names=(), statuses=()) -> pd.DataFrame:
    """Rows whose dataset, backbone and status are among the chosen ones (an empty choice keeps all)."""
    keep = pd.Series(True, index=df.index)
    for col, chosen in (("dataset", datasets), ("backbone", backbone_names), ("status", statuses)):
        if chosen:
            keep &= df[col].isin(list(chosen))
    return df[keep]


def class_groups(df: pd.DataFrame) -> dict[str, list[str]]:
    """Class set -> run ids trained on it (damaged runs excluded): test metrics compare only within a group."""
    ok = df[df["status"] != "damaged"]
    return {str(k): list(g["run_id"]) for k, g in ok.groupby("classes", sort=False)}


def mixing_message(groups: dict[str, list[str]]) -> str | None:
    """A warning naming the class sets when the chosen runs mix them; None when there is one set."""
    if len(groups) <= 1:
        return None
    # Class names are folder names: escaped, so a folder named like an image link loads nothing.
    parts = "; ".join(f"\\[{escape_markdown(k)}\\]: {len(v)} run{'s' if len(v) != 1 else ''}"
                      for k, v in groups.items())
    return (f"The chosen runs were trained on {len(groups)} different class sets ({parts}). Test accuracy, recall "
            f"and AUROC mean different things on different tasks, so the test-metric charts show one class set "
            f"at a time.")


def curves_frame(infos: list[runs.RunInfo]) -> pd.DataFrame:
    """Every epoch row of every run, with a run_id column (long format, for export)."""
    frames = [runs.read_metrics(i.path).assign(run_id=i.run_id) for i in infos if not i.damaged]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["run_id", *runs.METRIC_COLUMNS])
    df = pd.concat(frames, ignore_index=True)
    return df[["run_id", *runs.METRIC_COLUMNS]]


# How the runs table writes each numeric column (numbers.cell): one precision per kind, as everywhere else.
COLUMN_KINDS = {"best_val_acc": "percent", **{c: "score" if numbers.is_score(c) else "percent" for c in TEST_COLUMNS},
                **{c: "count" for c in ("epochs_run", "epochs_planned", "epochs_to_best", "total_params",
                                        "trainable_params", "trainable_at_start", "n_classes")},
                "sec_per_epoch": "seconds"}


def styled_table(df: pd.DataFrame):
    """The runs table for the eye (a pandas Styler: the numbers stay numbers, so columns still sort by value):
    shares as percentages, AUROC as a score, '—' where a run has no value, never 'None'."""
    fmt = {c: (lambda v, k=k: numbers.cell(v, k)) for c, k in COLUMN_KINDS.items() if c in df.columns}
    if "started" in df.columns:
        fmt["started"] = lambda t: t.strftime("%Y-%m-%d %H:%M")
    return df.style.format(fmt, na_rep=numbers.MISSING)


def to_csv(df: pd.DataFrame) -> str:
    """CSV text of a table (no index; ISO timestamps; floats rounded to numbers.CSV_DIGITS decimals, so 0.7 reads
    0.7, not 0.6999999999999999) for a download button; no cell runs as a spreadsheet formula."""
    df = numbers.rounded(df)
    text_cols = [c for c in df.columns if pd.api.types.is_object_dtype(df[c]) or pd.api.types.is_string_dtype(df[c])]
    df = df.assign(**{c: df[c].map(safe_csv_cell) for c in text_cols}) if text_cols else df
    buf = io.StringIO()
    df.to_csv(buf, index=False, date_format="%Y-%m-%dT%H:%M:%S")
    return buf.getvalue()


def progress_text(info: runs.RunInfo) -> str:
    """One line on where an active run is: 'epoch 3 of 10, batch 12/40 (training)'."""
    st = info.status
    if info.state == "queued":
        return f"{info.run_id}: waiting in the queue"
    epoch = _num(st.get("epoch"))
    done, total = (0 if math.isnan(epoch) else int(epoch)), st.get("epochs") or info.config.get("epochs", "?")
    batch = f", batch {st.get('batch')}/{st.get('batches')}" if st.get("batches") else ""
    phase = {"prepare": "preparing", "train": "training", "val": "validating", "test": "testing"}.get(
        st.get("phase"), str(st.get("phase") or "starting"))
    return f"{info.run_id}: epoch {done} of {total}{batch} ({phase})"


def changed_states(before: dict[str, str], infos: list[runs.RunInfo]) -> list[str]:
    """Runs whose state differs from `before` (run id -> state): a finished job means new test results to show."""
    return [i.run_id for i in infos if i.run_id in before and before[i.run_id] != i.state]


def _shown_dataset(summary: dict) -> dict:
    """A dataset summary as a page shows it: no root, skipped files relative to it (runs made before issue 17)."""
    if not isinstance(summary, dict):
        return {}
    root = summary.get("root")
    out = {k: v for k, v in summary.items() if k != "root"}
    if root and isinstance(summary.get("skipped"), list):
        out["skipped"] = [[relative_path(str(s[0]), str(root)), *s[1:]] if isinstance(s, list) and s else s
                          for s in summary["skipped"]]
    return out
def arithmetic_of(meta: dict) -> str:
    """How a run computed, with the timed trial's measured gain: "bfloat16 mixed precision, channels-last (1.9x)"."""
    words = str(meta.get("precision", "float32"))
    trial = meta.get("speed_trial") if isinstance(meta.get("speed_trial"), dict) else {}
    if "memory_format" in meta:
        words += f", {meta['memory_format']}"
    ratio = _num(trial.get("ratio"))
    source = str(trial.get("source", ""))
    if (source.startswith("measured") or source == "remembered") and not math.isnan(ratio):
        words += f" ({ratio:.2f}x {trial.get('reference') or 'float32'}, measured"
        words += f", from epoch {trial['epoch']})" if int(trial.get("epoch") or 1) > 1 else ")"
    elif trial.get("source"):
        words += " (not measured: small dataset)"
    return words


def run_recipe(info: runs.RunInfo) -> dict:
    """What a run was trained with: its config, dataset summary and library versions."""
    if info.damaged:
        return {"problem": info.damaged}
    return {"config": {**info.config, "data": dataset_name(str(info.config.get("data", "")))},
            "dataset": _shown_dataset(info.meta.get("dataset") or {}),
            "initialisation": info.meta.get("init_note", ""), "arithmetic": arithmetic_of(info.meta),
            "versions": info.meta.get("versions", {})}



def coverage_rows(test: dict) -> list[dict]:
    """Per coverage level of a run's test split: promised, reached (the sets themselves and the sets shown),
    mean set size, share 'both' and share flagged unlike the training images; a level without sets says why."""
    rows = []
    for c in test.get("coverage") or []:
        if not c.get("ok"):
            rows.append({"promised": numbers.level(c["level"]), "reached": numbers.MISSING,
                         "note": c.get("reason", "")})
            continue
        row = {"promised": numbers.level(c["level"]), "reached": numbers.percent(c["conformal_coverage"]),
               "reached by the sets shown": numbers.percent(c["coverage"]),
               "mean set size": round(c["mean_size"], 3), "answers 'both'": numbers.percent(c["share_both"]),
               "images": numbers.cell(c["n"], "count")}
        if c.get("share_flagged") is not None:  # older runs did not record it
            row["unlike training (so 'both')"] = numbers.percent(c["share_flagged"])
        rows.append(row)
    # every row has every column (a missing key is a 'None' cell on the page)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return [{k: r.get(k, numbers.MISSING) for k in columns} for r in rows]


def broken_promises(test: dict, slack: float = 0.0) -> list[str]:
    """A sentence per level whose conformal sets covered fewer test images than promised (a teaching point)."""
    out = []
    for c in test.get("coverage") or []:
        if c.get("ok") and c["conformal_coverage"] < c["level"] - slack:
            level = numbers.level(c["level"])
            out.append(f"At {level} the sets promised to hold the true class for at least {level} "
                       f"of images like the validation images; on this test split they held it for "
                       f"{numbers.percent(c['conformal_coverage'])}. The promise holds only for images drawn like the validation "
                       "split: these differ.")
    return out
