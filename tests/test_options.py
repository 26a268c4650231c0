"""Options declared once: value types parsed once, CLI flags and Trainer widgets generated from the fields."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from cxrdemo import config as config_module
from cxrdemo.cli import main as cli
from cxrdemo.cli import options
from cxrdemo.config import DecisionRule, FreezeLevel, TrainConfig, option
from cxrdemo.errors import ConfigError
from cxrdemo.views import trainer_form, words

REPO = Path(__file__).resolve().parents[1]
LABELLED = [f.name for f in fields(TrainConfig) if f.metadata["label"]]


def _sub(argv: list[str]):
    return cli.build_parser().parse_args(argv)


# ---------------------------------------------------------------- value types

@pytest.mark.parametrize("text, kind, n", [("none", "none", 0), ("head", "head", 0), ("3", "groups", 3),
                                           ("0", "groups", 0), ("gradual:2", "gradual", 2)])
def test_freeze_level_parses_once_and_gives_its_text_back(text, kind, n):
    level = FreezeLevel.parse(text)
    assert (level.kind, level.n, str(level)) == (kind, n, text)
    assert FreezeLevel.parse(level) is level and level.gradual_epochs == (n if kind == "gradual" else None)


@pytest.mark.parametrize("text, kind, target", [("argmax", "argmax", None), ("val", "val", None),
                                                ("spec:0.95", "spec", 0.95), ("sens:0.975", "sens", 0.975)])
def test_decision_rule_parses_once_and_gives_its_text_back(text, kind, target):
    rule = DecisionRule.parse(text)
    assert (rule.kind, rule.target, str(rule), rule.tuned) == (kind, target, text, kind != "argmax")


@pytest.mark.parametrize("parse, text, words_", [
    (FreezeLevel.parse, "most", "Freeze level"), (FreezeLevel.parse, "gradual:0", "at least 1 epoch"),
    (FreezeLevel.parse, "٣", "Freeze level"), (FreezeLevel.parse, 3, "freeze must be text"),
    (DecisionRule.parse, "spec:1.5", "Decision rule"), (DecisionRule.parse, "spec:0.3", "Decision rule"),
    (DecisionRule.parse, "youden", "Decision rule"), (DecisionRule.parse, None, "threshold must be text"),
])
def test_bad_levels_and_rules_are_one_sentence(parse, text, words_):
    with pytest.raises(ConfigError, match=words_):
        parse(text)


def test_config_holds_parsed_values_and_run_files_keep_the_text():
    c = TrainConfig(freeze="gradual:3", threshold="spec:0.97")
    assert c.freeze == FreezeLevel("gradual", 3) and c.threshold == DecisionRule("spec", 0.97)
    assert c.to_dict()["freeze"] == "gradual:3" and c.to_dict()["threshold"] == "spec:0.97"
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    # The shipped demo model's config.json (written before `extra` was removed) reads back to the same text.
    saved = json.loads((REPO / "weights" / "demo" / "config.json").read_text())["config"]
    # Options added since (probes, the lesson options) take their defaults.
    added = ("probes", "tag", "train_share", "split_by", "marker", "population_age", "population_source")
    assert TrainConfig.from_dict(saved).to_dict() == {**{k: v for k, v in saved.items() if k != "extra"},
                                                      **{k: getattr(TrainConfig(), k) for k in added}}


def test_words_for_rules_and_levels():
    assert words.rule_words("argmax") == "the most probable class"
    assert words.rule_words("val") == "a threshold tuned on validation images for balanced accuracy"
    assert words.rule_how(DecisionRule.parse("spec:0.97")) == \
        "that keeps 97% specificity (normals called normal) on validation images"
    assert words.rule_how("sens:0.95") == "that keeps 95% sensitivity (disease found) on validation images"
    assert words.freeze_words("2", "resnet18") == "2 — freeze stem + layer1"
    assert words.freeze_words(FreezeLevel("gradual", 1), "cnn8").startswith("gradual:1 — head only for 1 epoch")
    assert words.freeze_phase_words("gradual:2") == " in the first epochs" and words.freeze_phase_words("3") == ""


# ---------------------------------------------------------------- declared once

@pytest.mark.parametrize("command", [["train"], ["jobs", "submit"]])
def test_every_option_is_a_flag_and_no_flags_give_the_defaults(command):
    args = _sub(command)
    assert options.config_from_args(args) == TrainConfig()
    for f in fields(TrainConfig):  # each flag sets its field, and only that one
        value = TrainConfig().to_dict()[f.name]
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        assert getattr(_sub([*command, flag, str(value)]), f.name) == value


def test_every_labelled_option_is_a_cli_flag_and_a_trainer_widget():
    specs = {s.name: s for s in trainer_form.widget_specs()}
    flags = {a.dest for a in _train_parser()._actions}
    assert set(LABELLED) <= flags and set(specs) == set(LABELLED)
    assert {"epochs", "lr", "augment", "threshold", "precision", "seed"} <= set(LABELLED)
    defaults = TrainConfig().to_dict()
    for name, spec in specs.items():
        assert spec.default == defaults[name] and spec.label
        if spec.kind == "select":
            assert spec.default in spec.options and all(spec.word(v) for v in spec.options)
    assert trainer_form.make_config({k: defaults[k] for k in specs}) == TrainConfig()
    with pytest.raises(ConfigError, match="does not know: colour"):
        trainer_form.make_config({"colour": "red"})


def _train_parser():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["train"]


def test_adding_an_option_is_one_edit(monkeypatch):
    @dataclass(frozen=True)
    class WithWarmup(TrainConfig):
        warmup: int = option(0, "epochs of linear lr warm-up", label="Warm-up epochs", group="more", min=0, max=10)

    monkeypatch.setattr(config_module, "TrainConfig", WithWarmup)
    for module in (options, trainer_form):
        monkeypatch.setattr(module, "TrainConfig", WithWarmup)
        monkeypatch.setattr(module, "option_fields", lambda: fields(WithWarmup))
    args = _sub(["train", "--warmup", "3", "--epochs", "2"])
    assert options.config_from_args(args) == WithWarmup(warmup=3, epochs=2)
    assert "epochs of linear lr warm-up" in _train_parser().format_help()
    (spec,) = [s for s in trainer_form.widget_specs("more") if s.name == "warmup"]
    assert (spec.kind, spec.label, spec.default, spec.max) == ("number", "Warm-up epochs", 0, 10)
    assert trainer_form.make_config({"warmup": 4.0}).warmup == 4


def test_the_cli_modules_import_without_a_loop():
    import ast

    for name in ("jobs", "options"):
        tree = ast.parse((REPO / "cxrdemo" / "cli" / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "cxrdemo.cli.main" not in imported, name


def test_the_worker_entry_is_hidden_but_parses():
    text = cli.build_parser().format_help()
    assert "worker" not in text and "SUPPRESS" not in text and "COMMAND" in text and "demo-model" in text
    assert _sub(["worker", "--run-dir", "runs/x"]).run_dir == "runs/x"


# ---------------------------------------------------------------- --runs-dir before or after the sub-command

@pytest.mark.parametrize("command", [["train"], ["evaluate", "--run", "demo", "--data", "demo"],
                                     ["predict", "x.png"], ["jobs", "list"]])
def test_runs_dir_before_or_after_the_subcommand(command, tmp_path):
    where = str(tmp_path / "store")
    assert _sub(["--runs-dir", where, *command]).runs_dir == where
    assert _sub([*command, "--runs-dir", where]).runs_dir == where
    assert _sub(command).runs_dir is None


@pytest.mark.slow
def test_jobs_list_and_train_use_the_store_named_after_the_subcommand(tmp_path, tiny_dataset, capsys, monkeypatch):
    monkeypatch.setenv("CXRDEMO_RUNS_DIR", str(tmp_path / "elsewhere"))  # restored after the test
    store = tmp_path / "store"
    assert cli.main(["jobs", "list", "--runs-dir", str(store)]) == 0
    assert capsys.readouterr().out.strip() == f"No runs in {store.resolve()}."
    assert cli.main(["train", "--data", str(tiny_dataset), "--backbone", "cnn8", "--img-size", "32", "--epochs", "1",
                     "--quiet", "--runs-dir", str(store)]) == 0
    run_id = capsys.readouterr().out.splitlines()[0]
    assert (store / run_id / "model.pt").is_file() and not (tmp_path / "elsewhere").exists()
    assert cli.main(["--runs-dir", str(store), "jobs", "list"]) == 0
    assert capsys.readouterr().out.startswith(f"{run_id}  completed")
