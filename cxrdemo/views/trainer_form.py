"""The Trainer form as plain data, generated from the option declarations: widget specs, choices, the config.

The page lays the widgets out; what each one is (label, options, bounds, tooltip) comes from its TrainConfig
field, so a new option appears in the form without touching the page.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cxrdemo import paths
from cxrdemo.config import FreezeLevel, TrainConfig, option_fields
from cxrdemo.errors import ConfigError, RunError
from cxrdemo.model.files import has_model, model_path
from cxrdemo.runs import store as runs
from cxrdemo.views import numbers, words

SWEEP_FREEZES = ("none", "head", "1", "2", "3", "gradual:1", "gradual:2")
CASTS: dict[str, Callable[[Any], Any]] = {"int": int, "float": float}
# Options whose words are computed rather than declared (they depend on the registry or on the rule's numbers).
_FORMATTERS: dict[str, Callable[[Any], str]] = {"threshold": words.rule_label}
# The form's layout, declared once: widgets per row of each group, and the characters a choice's label may have
# in a box of that width at 1400 px (Streamlit cuts a longer one with '…'); tests hold every label to it.
ROW_WIDGETS = {"network": 2, "training": 4, "more": 3, "population": 2}
LABEL_CHARS = {2: 56, 3: 32, 4: 26}


# ---------------------------------------------------------------- widget specs

@dataclass(frozen=True)
class WidgetSpec:
    """One form widget for one TrainConfig field (its key is the field name)."""

    name: str
    label: str
    group: str  # "data", "network", "training", "more"
    kind: str  # "number", "select", "text", or "custom" (drawn by the page with choices from this module)
    default: Any
    options: tuple = ()  # select: the values offered
    words: dict = field(default_factory=dict)  # select: value -> what the form shows
    min: float | None = None  # number bounds, step and display format
    max: float | None = None
    step: float | None = None
    format: str | None = None
    help: str | None = None

    def word(self, value: Any) -> str:
        """What the form shows for `value` of a select."""
        return self.words.get(value, str(value))


def widget_specs(group: str | None = None) -> list[WidgetSpec]:
    """The form widget of every labelled TrainConfig field (of one group), in declaration order."""
    defaults = TrainConfig().to_dict()  # freeze level and decision rule as the text a widget holds
    specs = []
    for f in option_fields():
        m = f.metadata
        if not m["label"] or (group is not None and m["group"] != group):
            continue
        options = tuple(m["choices"] or m.get("presets", ()))
        kind = "custom" if m.get("custom") else ("select" if options else ("text" if f.type == "str" else "number"))
        fmt = _FORMATTERS.get(f.name)
        shown = {v: fmt(v) for v in options} if fmt else dict(m["labels"])
        specs.append(WidgetSpec(f.name, m["label"], m["group"], kind, defaults[f.name], options, shown,
                                m.get("min"), m.get("max"), m.get("step"), m.get("format"), m.get("tip")))
    return specs


def make_config(values: dict[str, Any]) -> TrainConfig:
    """A validated TrainConfig from widget values keyed by field name, each cast to its field's type."""
    types = {f.name: f.type for f in option_fields()}
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(f"The form sent options this version does not know: {', '.join(unknown)}.")
    return TrainConfig(**{k: CASTS.get(types[k], lambda v: v)(v) for k, v in values.items()})


# ---------------------------------------------------------------- choices that depend on other choices

def backbone_label(backbone: str) -> str:
    """'resnet18 (11,176,512 trunk parameters)': a backbone choice with the size of its trunk.

    The same for any number of classes: the browser keeps a choice by its label, so a label that changed with the
    dataset (a 6-class folder) lost the choice and the page fell back to the first backbone. The head's size for
    this dataset is in the caption under the choice (trainable_text)."""
    from cxrdemo.model import backbones

    return f"{backbone} ({sum(backbones.group_param_counts(backbone)[:-1]):,} trunk parameters)"


def freeze_options(backbone: str) -> dict[str, str]:
    """Freeze level -> label, from the registry's group names."""
    from cxrdemo.model import backbones

    levels = ["none", "head", *map(str, range(1, len(backbones.get_spec(backbone).stage_names))),
              *(f"gradual:{t}" for t in (1, 2, 3))]
    return {level: words.freeze_words(level, backbone) for level in levels}


def trainable_text(backbone: str, freeze: FreezeLevel | str, num_classes: int = 2, head: str = "linear") -> str:
    """'11,177,538 of 11,177,538 parameters trainable (100.00%)' for a freeze level (first epoch)."""
    from cxrdemo.model import backbones

    total, trainable = backbones.param_counts(backbone, num_classes, freeze, head)
    phase = words.freeze_phase_words(freeze)
    return f"{trainable:,} of {total:,} parameters trainable ({trainable / total:.2%}){phase}"


@functools.lru_cache(maxsize=32)
def _checkpoint_backbone(path: str, mtime: float) -> str | None:
    from cxrdemo.model import checkpoint  # torch: only once the demo model is offered

    try:
        return checkpoint.load(Path(path)).backbone
    except RunError:  # an unreadable demo model is simply not offered
        return None


def demo_backbone() -> str | None:
    """The backbone of the shipped demo model, or None when it is not there."""
    d = paths.demo_run_dir()
    if (d / "config.json").is_file():
        with_config = runs.load_run(d).config.get("backbone")
        if with_config:
            return str(with_config)
    model = model_path(d)
    return _checkpoint_backbone(str(model), model.stat().st_mtime) if model.is_file() else None


def init_options(backbone: str, infos: list[runs.RunInfo]) -> dict[str, str]:
    """Init value -> label: ImageNet (when the registry has weights), scratch, finished runs of this backbone."""
    from cxrdemo.model import backbones

    opts = {}
    if backbones.get_spec(backbone).supports_imagenet:
        opts["imagenet"] = "ImageNet weights (transfer learning)"
    opts["scratch"] = "From scratch (random weights)"
    if demo_backbone() == backbone:
        opts[f"run:{paths.DEMO_RUN_NAME}"] = "The shipped demo model"
    for info in reversed(infos):
        if info.state == "completed" and info.config.get("backbone") == backbone and has_model(info.path):
            best = runs.best_val_acc(runs.read_metrics_rows(info.path))
            opts[f"run:{info.run_id}"] = f"Run {words.run_name(info.run_id)}" + (
                f" (best val acc {numbers.percent(best)})" if best is not None else "")
    return opts


def imagenet_note(backbone: str, show_paths: bool = True) -> str | None:
    """None when ImageNet weights are usable offline; else where to put the file (the server's folder only when
    `show_paths`: never to a student in classroom mode), and the alternatives."""
    from cxrdemo.model import backbones

    if not backbones.get_spec(backbone).supports_imagenet or backbones.find_imagenet_weights(backbone):
        return None
    where = f"`{paths.weights_dir()}`" if show_paths else "the app's weights folder (the teacher knows where)"
    return (f"ImageNet weights for {backbone} are not on this machine. To use them, put the file "
            f"`{backbones.imagenet_weight_file(backbone)}` into {where}. Otherwise start from "
            "scratch or from a finished run.")


def sweep_configs(base: TrainConfig, backbone_names: list[str], freezes: list[str],
                  seeds: int = 1) -> tuple[list[TrainConfig], list[str]]:
    """The backbone x freeze grid as configs (each repeated with `seeds` seeds from base.seed on), plus sentences
    for combinations skipped or changed."""
    from cxrdemo.model import backbones

    configs, notes = [], []
    start = base.init
    if start.startswith("run:"):  # one run's weights fit one backbone only
        start = "scratch"
        notes.append("A sweep over backbones cannot start every network from one run: they start from scratch.")
    for name, freeze in itertools.product(backbone_names, freezes):
        try:
            backbones.frozen_groups(freeze, name)  # a freeze level beyond this backbone's groups
            init = start
            if init == "imagenet" and not backbones.get_spec(name).supports_imagenet:
                init = "scratch"
                notes.append(f"{name} has no ImageNet weights: it starts from scratch.")
            elif init == "imagenet" and backbones.find_imagenet_weights(name) is None:
                raise ConfigError(f"ImageNet weights ({backbones.imagenet_weight_file(name)}) are not on this "
                                  "machine; skipped")
            configs += [base.replace(backbone=name, freeze=freeze, init=init, seed=base.seed + i)
                        for i in range(max(1, seeds))]
        except ConfigError as exc:
            notes.append(f"{name} with freeze {freeze}: {exc}")
    return configs, list(dict.fromkeys(notes))


def backend_options(address: str | None, problem: str | None) -> tuple[dict[str, str], str]:
    """'Train on' choices (backend -> label) and the default: the Ray cluster when it answers, else this computer."""
    if not address:
        return {"local": "this computer"}, "local"
    return {"ray": f"the Ray cluster at {address}", "local": "this computer"}, "local" if problem else "ray"


def scan_rows(scan) -> list[dict]:
    """One row per split: images per class and the total (for a table)."""
    return [{"split": s, **c, "total": sum(c.values())} for s, c in scan.counts().items()]


# ---------------------------------------------------------------- what a recipe can and cannot do

def init_problem(backbone: str, init: str) -> str | None:
    """Why starting `backbone` from `init` cannot work on this machine (a sentence), or None when it can."""
    if init == "imagenet":
        return imagenet_note(backbone)
    return None


def init_label(backbone: str, init: str, label: str) -> str:
    """An init choice's label, marked unavailable when it cannot work here."""
    return f"{label.split(' (')[0]} — not on this machine" if init_problem(backbone, init) else label


def repeat_problem(config: dict) -> str | None:
    """Why starting a failed run again would fail the same way (a sentence), or None when it might work."""
    from cxrdemo.model import backbones

    backbone, init = str(config.get("backbone", "")), str(config.get("init", ""))
    if backbone not in backbones.backbone_names():
        return f"This version has no backbone called {backbone}."
    problem = init_problem(backbone, init)
    data_path = str(config.get("data", ""))
    if not problem and data_path and data_path != "demo" and not Path(data_path).expanduser().exists():
        problem = f"The dataset folder {data_path} is not there any more."
    return problem


def source_rule(init: str, classes: list[str] | tuple[str, ...], runs_dir: str | Path | None = None) -> str | None:
    """The decision rule of the run a fine-tune starts from, when its classes match this dataset's; else None."""
    from cxrdemo.views.compare import run_classes

    if not init.startswith("run:"):
        return None
    try:
        info = runs.load_run(runs.run_dir(init[4:], runs_dir))
    except RunError:
        return None
    rule = info.config.get("threshold")
    if not rule or info.damaged or list(run_classes(info, runs.read_test_metrics(info.path))) != list(classes):
        return None
    return str(rule)


def sweep_summary(config: TrainConfig) -> str:
    """What every run of a sweep uses: epochs, image size and starting weights, in the form's words."""
    return (f"Each run trains for **{config.epochs} epoch{'s' if config.epochs != 1 else ''}** on "
            f"**{config.img_size} px** images, starting **{words.init_words(config.init)}**"
            f"{'' if not config.init.startswith('run:') else ' (networks other than its own start from scratch)'}"
            f", with the other settings above.")
