"""Words the pages, the model card and the CLI show: freeze levels, decision rules, model choices, icons, notices.

One place turns each option value into words, so the Trainer form, the Diagnosis sentence, the model card and
the Compare table say the same thing.
"""

from __future__ import annotations

from pathlib import Path

from cxrdemo import paths
from cxrdemo.config import DecisionRule, FreezeLevel
from cxrdemo.runs import store as runs

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
    return f"that keeps {100 * rule.target:g}% {what} on validation images"


def rule_words(rule: DecisionRule | str) -> str:
    """A decision rule in words, for a form or a model card."""
    rule = DecisionRule.parse(rule)
    return f"a threshold {rule_how(rule)}" if rule.tuned else "the most probable class"


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
    if (paths.demo_run_dir() / "model.pt").is_file():
        choices["Demo model (shipped)"] = paths.DEMO_RUN_NAME
    for info in reversed(runs.list_runs(runs_dir)):
        if info.state == "completed" and (info.path / "model.pt").is_file():
            choices[f"{info.run_id} ({run_title(info.config)})"] = info.run_id
    return choices
