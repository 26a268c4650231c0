"""The Compare page's runs table in words: each column's header, help and number format, full and compact (plain
data; app_pages/ui.column_config makes Streamlit's column configuration of it), a run's label, damaged runs."""

from __future__ import annotations

import pandas as pd

from cxrdemo.views.compare import COMPACT_WIDTHS, TEST_METRIC_LABELS
from cxrdemo.views.text import escape_markdown

# name -> spec: kind (text, number, checkbox, datetime), label, and optional help, format, pinned
COLUMNS: dict[str, dict] = {
    "name": dict(kind="text", label="Run", pinned=True, help="The run's label (else its recipe) and when it "
                 "started; the full run id is in the run id column"),
    "recipe": dict(kind="text", label="Recipe", help="Backbone · starting weights · freeze level"),
    "run_id": dict(kind="text", label="Run id"),
    "example": dict(kind="checkbox", label="Example", help="A read-only example run shipped with the project (made "
                    "by `python -m cxrdemo lessons build-examples`; no weights)"),
    "status": dict(kind="text", label="Status"),
    "problem": dict(kind="text", label="Problem", help="Why a run failed, stopped or cannot be read"),
    "init": dict(kind="text", label="Initialisation"),
    "freeze": dict(kind="text", label="Freeze level"),
    "epochs_run": dict(kind="number", label="Epochs run"),
    "epochs_planned": dict(kind="number", label="Epochs planned"),
    "best_val_acc": dict(kind="number", label="Best val acc"),
    "epochs_to_best": dict(kind="number", label="Epoch of best val loss", help="How fast the run converged"),
    **{c: dict(kind="number", label=label) for c, label in TEST_METRIC_LABELS.items()},
    "test_precision": dict(kind="number", label="Test precision (macro)"),
    "total_params": dict(kind="number", label="Total parameters", format="localized"),
    "trainable_params": dict(kind="number", label="Trainable parameters", format="localized",
                             help="Parameters the optimiser updated in the last epoch run (gradual:T: see the note "
                                  "column)"),
    "trainable_at_start": dict(kind="number", label="Trainable in epoch 1", format="localized"),
    "params_note": dict(kind="text", label="Parameter note"),
    "sec_per_epoch": dict(kind="number", label="Seconds per epoch"),
    "arithmetic": dict(kind="text", label="Arithmetic", help="float32 or bfloat16 mixed precision and the memory "
                       "layout, chosen by a short timed trial on this computer (its measured gain in brackets): "
                       "compare seconds per epoch like with like"),
    "started": dict(kind="datetime", label="Started", format="YYYY-MM-DD HH:mm"),
}
EXAMPLES_HELP = ("Read-only lesson runs made by `python -m cxrdemo lessons build-examples`, marked 'example' "
                 "everywhere; they carry no weights, so Diagnosis cannot use them.")
# The compact table's short headers: the caption above it says they are test results.
SHORT_LABELS = {"name": "Run", "recipe": "Recipe", "status": "Status", "epochs_run": "Epochs",
                "test_accuracy": "Accuracy", "test_auroc": "AUROC", "test_sensitivity": "Sens.",
                "test_specificity": "Spec.", "trainable_params": "Trainable", "sec_per_epoch": "s/epoch"}


def column_specs(compact: bool) -> dict[str, dict]:
    """Every column's spec, or the compact table's (short headers, fixed widths)."""
    if not compact:
        return COLUMNS
    return {col: {**COLUMNS.get(col, {"kind": "text"}), "label": SHORT_LABELS[col], "width": width}
            for col, width in COMPACT_WIDTHS.items()}


def run_label(table: pd.DataFrame, run_id: str) -> str:
    """'name — recipe (status)': how a run of the table is named in a choice."""
    row = table.loc[table["run_id"] == run_id].iloc[0]
    return f"{row['name']} — {row['recipe']} ({row['status']})" if row["recipe"] else str(row["name"])


def damaged_sentence(table: pd.DataFrame) -> str:
    """The warning over the table naming each run folder that cannot be read ('' when none)."""
    damaged = table[table["status"] == "damaged"]
    if not len(damaged):
        return ""
    return ("Some run folders cannot be read and are listed as 'damaged': "
            + "; ".join(f"{escape_markdown(r)}: {escape_markdown(p)}"  # a folder's name and its fault: text
                        for r, p in zip(damaged["run_id"], damaged["problem"])))


def problem_sentences(chosen: pd.DataFrame) -> list[str]:
    """'**name**: problem' for each chosen run that has one (the compact table does not show the column); a problem
    names folders and classes, so it is text, not Markdown."""
    return [f"**{escape_markdown(name)}**: {escape_markdown(problem)}"
            for name, problem in zip(chosen["name"], chosen["problem"]) if problem]
