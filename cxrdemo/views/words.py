"""Words the pages, the model card and the CLI show: freeze levels, decision rules, model choices, icons, notices.

One place turns each option value into words, so the Trainer form, the Diagnosis sentence, the model card and
the Compare table say the same thing.
"""

from __future__ import annotations

import re
from pathlib import Path

from cxrdemo import paths
from cxrdemo.config import DecisionRule, FreezeLevel
from cxrdemo.model.files import has_model
from cxrdemo.runs import store as runs
from cxrdemo.views import numbers

NOTICE = ("**Research and teaching demo — not for clinical use.** Predictions and heatmaps are not a diagnosis "
          "and must not guide patient care.")
STATE_ICONS = {"queued": ":material/schedule:", "running": ":material/directions_run:",
               "completed": ":material/check_circle:", "failed": ":material/error:", "cancelled": ":material/cancel:",
               "interrupted": ":material/warning:", "damaged": ":material/healing:"}
# What a user should know about each heatmap method before choosing it (shown next to the choice).
CAM_NOTES: dict[str, str] = {
    "GradCAM": "The standard: feature maps weighted by how much they raise the class score.",
    "GradCAM++": "Like GradCAM, with finer weights; often better when a finding appears in several places.",
    "EigenCAM": "The main pattern in the feature maps: the same map whichever class is explained.",
    "ScoreCAM": "No gradients: masks the image with every feature map and re-runs the network — slow "
                "(about one forward pass per 16 feature maps).",
    "LayerCAM": "Gradients weighted pixel by pixel; sharper, more local maps.",
}


# ---------------------------------------------------------------- decision rules

def rule_how(rule: DecisionRule | str) -> str:
    """How a tuned threshold was chosen, as a phrase after 'threshold' ('' for argmax, which has none)."""
    rule = DecisionRule.parse(rule)
    if rule.kind == "argmax":
        return ""
    if rule.kind == "val":
        return "tuned on validation images for balanced accuracy"
    what = "specificity (normals called normal)" if rule.kind == "spec" else "sensitivity (disease found)"
    return f"that keeps {numbers.level(rule.target)} {what} on validation images"


def rule_words(rule: DecisionRule | str) -> str:
    """A decision rule in words, for a form or a model card."""
    rule = DecisionRule.parse(rule)
    return f"a threshold {rule_how(rule)}" if rule.tuned else "the most probable class"


def rule_label(rule: DecisionRule | str) -> str:
    """A decision rule as a short choice in the form ('keep 97% specificity'); rule_words says it in full."""
    rule = DecisionRule.parse(rule)
    if rule.kind == "argmax":
        return "the most probable class"
    if rule.kind == "val":
        return "balanced on validation"
    return f"keep {numbers.level(rule.target)} {'specificity' if rule.kind == 'spec' else 'sensitivity'}"


# ---------------------------------------------------------------- freeze levels

def freeze_words(level: FreezeLevel | str, backbone: str) -> str:
    """A freeze level in words for `backbone`, named by the registry's groups ('2 — freeze stem + layer1')."""
    from cxrdemo.model import backbones

    level = FreezeLevel.parse(level)
    if level.kind == "none":
        return "none — train every layer (full fine-tuning)"
    if level.kind == "head":
        return "head — train only the new classifier head"
    if level.kind == "gradual":
        return f"{level} — head only for {level.n} epoch(s), then everything"
    stages = backbones.get_spec(backbone).stage_names
    return f"{level} — freeze {' + '.join(stages[:level.n])}"


def freeze_phase_words(level: FreezeLevel | str) -> str:
    """' in the first epochs' after a trainable count that changes later (gradual:T), else ''."""
    return " in the first epochs" if FreezeLevel.parse(level).kind == "gradual" else ""


def gradual_note(level: FreezeLevel | str, first: int, total: int) -> str:
    """What a trainable-parameter count means for gradual:T ('' for any other level)."""
    level = FreezeLevel.parse(level)
    if level.kind != "gradual":
        return ""
    return (f"gradual: {first:,} trainable (head only) in epochs 1-{level.n}, then {total:,} (all layers); "
            f"trainable_params is the count at the last epoch run")


# ---------------------------------------------------------------- runs and models

def init_words(init: str) -> str:
    """Starting weights in the form's own words ('From scratch', 'ImageNet weights', 'from run X')."""
    init = str(init)
    if init == "scratch":
        return "From scratch"
    if init == "imagenet":
        return "ImageNet weights"
    if init == f"run:{paths.DEMO_RUN_NAME}":
        return "from the shipped demo model"
    return f"from run {init[4:]}" if init.startswith("run:") else init


def run_title(config: dict) -> str:
    """'cnn8, From scratch, freeze head': a run's recipe in a few words, worded as the Trainer form words it."""
    return f"{config.get('backbone')}, {init_words(config.get('init', '?'))}, freeze {config.get('freeze')}"


def model_choices(runs_dir: str | Path | None = None) -> dict[str, str]:
    """Label -> run reference for every model that can predict: the demo model first, then completed runs."""
    choices: dict[str, str] = {}
    if has_model(paths.demo_run_dir()):
        choices["Demo model (shipped)"] = paths.DEMO_RUN_NAME
    for info in reversed(runs.list_runs(runs_dir)):
        if info.state == "completed" and has_model(info.path):
            choices[f"{info.run_id} ({run_title(info.config)})"] = info.run_id
    return choices


# ---------------------------------------------------------------- run names

_RUN_ID = re.compile(r"^(\d{4})(\d{2})(\d{2})-(\d{2})(\d{2})(\d{2})-(.+)$")
_FREEZE_SLUG = re.compile(r"^(none|head|gradual-\d+|\d+)(?:-(.+))?$")
EXAMPLE = "example"  # the mark of a read-only example run shipped with the project, wherever one is shown
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _id_parts(run_id: str) -> tuple[str, str, str, str] | None:
    """(backbone, freeze, label, 'D Mon HH:MM') of an id made by the run store, None for any other id."""
    from cxrdemo.model import backbones

    m = _RUN_ID.match(run_id)
    if not m:
        return None
    _, month, day, hour, minute, _, rest = m.groups()
    backbone = next((b for b in sorted(backbones.backbone_names(), key=len, reverse=True)
                     if rest.startswith(b + "-")), None)
    f = _FREEZE_SLUG.match(rest[len(backbone) + 1:]) if backbone else None
    if not f or not 1 <= int(month) <= 12:
        return None
    return backbone, f.group(1).replace("-", ":"), f.group(2) or "", f"{int(day)} {_MONTHS[int(month) - 1]} {hour}:{minute}"


def run_name(run_id: str, example: bool = False) -> str:
    """A run's short name for tables, legends and choices: its label (else its recipe) and when it started.

    '20261128-101028-cnn5-1-freeze-cnn5-1' -> 'freeze-cnn5-1 · 28 Nov 10:10'; an example run says so instead
    of a date ('freeze-cnn5-1 (example)'); the shipped demo model and ids the store did not make keep their id.
    """
    if run_id == paths.DEMO_RUN_NAME:
        return "shipped demo model"
    parts = _id_parts(run_id)
    if parts is None:
        return f"{run_id} ({EXAMPLE})" if example else run_id
    backbone, freeze, label, when = parts
    suffix = re.fullmatch(r"\d+", label)  # the store's '-2' of a second run in the same second, not a label
    name = f"{backbone} · freeze {freeze}" + (f" #{label}" if suffix else "") if suffix or not label else label
    return f"{name} ({EXAMPLE})" if example else f"{name} · {when}"


def _recipe_name(run_id: str, example: bool) -> str | None:
    """A labelled run named by its label and what a sweep varies (backbone, freeze); None for an unlabelled id."""
    parts = _id_parts(run_id)
    if parts is None or not parts[2] or re.fullmatch(r"\d+", parts[2]):
        return None
    backbone, freeze, label, when = parts
    name = f"{label} · {backbone} · freeze {freeze}"
    return f"{name} ({EXAMPLE})" if example else f"{name} · {when}"


def run_names(run_ids: list[str], examples: list[bool] | None = None) -> list[str]:
    """run_name of each id, made unique: runs of one sweep (one label) are named by what differs, their backbone
    and freeze level; two names that still read the same get their run's seconds, else its id."""
    examples = examples if examples is not None else [False] * len(run_ids)
    first = [run_name(r, bool(e)) for r, e in zip(run_ids, examples)]
    first = [(_recipe_name(r, bool(e)) or n) if first.count(n) > 1 else n for r, e, n in zip(run_ids, examples, first)]
    names = [f"{n}:{m.group(6)}" if first.count(n) > 1 and (m := _RUN_ID.match(r)) and not e else n
             for r, e, n in zip(run_ids, examples, first)]
    return [n if names.count(n) == 1 else f"{n} ({r})" for r, n in zip(run_ids, names)]


def init_short(init: str) -> str:
    """Starting weights in a table cell: 'scratch', 'ImageNet', 'demo model', 'run <name>'."""
    init = str(init)
    if init == f"run:{paths.DEMO_RUN_NAME}":
        return "demo model"
    if init.startswith("run:"):
        return f"run {run_name(init[4:])}"
    return {"scratch": "scratch", "imagenet": "ImageNet"}.get(init, init)
