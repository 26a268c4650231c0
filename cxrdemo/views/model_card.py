"""The model card of a completed run, as Markdown: one generator for every run, example runs and the demo model.

It reads only the run folder: config.json (recipe and dataset scan summary), status.json, test_metrics.json
(or test_predictions.csv), model.pt through model/checkpoint (decision, calibration, conformal, domain records)
and, when present, evaluation.json: further evaluation sets, each labelled in-distribution or shifted, and the
paragraphs the demo model adds under `notes` (data, results, domain, use, retrain; cli/demo_model.demo_notes). What needs model.pt is replaced by a plain sentence when a run ships without weights.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np

from cxrdemo.config import TrainConfig
from cxrdemo.errors import ConfigError, RunError
from cxrdemo.model import calibration, metrics
from cxrdemo.model.files import MODEL_FILE, has_model, model_path
from cxrdemo.population import Population, training_population
from cxrdemo.runs import store as runs
from cxrdemo.views import numbers
from cxrdemo.views.host_paths import Roots, shown_folder
from cxrdemo.views.population import population_line
from cxrdemo.views.text import code_block, escape_markdown
from cxrdemo.views.words import freeze_words, init_words, rule_words

EVALUATION_FILE = "evaluation.json"
METRICS = (("accuracy", "accuracy"), ("sensitivity", "sensitivity"), ("specificity", "specificity"),
           ("auroc", "AUROC"))
# Text that cannot form a link, an image, emphasis, code, a table cell or a block stays as it is (readable .md)
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 .,;:%'()/_-]*")


def model_card(run_dir: str | Path, extra_evaluations: list[dict] | None = None, roots: Roots = None) -> str:
    """The Markdown model card of the completed run in `run_dir` (+ evaluations measured elsewhere, most shifted first).

    RunError with a sentence when the folder is not a completed run. `roots` (a classroom): the retrain command
    names the data folder inside them only (views/host_paths)."""
    d = Path(run_dir)
    if not (d / "config.json").is_file():
        raise RunError(f"{d} is not a run folder: it has no config.json.")
    meta = runs.read_json(d / "config.json")
    status = runs.read_status(d) if (d / "status.json").is_file() else {}
    if status.get("state") != "completed":
        raise RunError(f"Run {d.name} has not completed (it is {status.get('state', 'without a status')}): "
                       "a model card describes a finished run.")
    card = runs.read_json(d / EVALUATION_FILE) if (d / EVALUATION_FILE).is_file() else {}
    notes = card.get("notes") or {}
    model = _model_file(d)
    records = model.records if model else {}
    config = dict(meta.get("config") or (model.config if model else {}))
    evals = [_own_test_split(d, records)] + list(card.get("evaluations") or []) + list(extra_evaluations or [])
    evals = sorted((e for e in evals if e), key=lambda e: e.get("label") != "shifted")  # the shifted set leads
    title = card.get("name") or f"run {meta.get('run_id') or d.name}"
    missing = "" if model else (f"This run ships without its model file ({MODEL_FILE}) — example runs carry curves "
                                "and test results only — so what only the model file records is not stated here.")
    parts = [f"# Model card: {_name(title)}",
             ("**Research and teaching demo — not for clinical use.** This model must not be used to diagnose, "
              "triage or treat anyone."),
             *([missing] if missing else []),
             "## The model", _recipe(meta.get("run_id") or d.name, config, meta, status, card),
             "## Intended population", _population(meta, config, model),
             "## The data", _data(meta, config), notes.get("data", ""),
             "## Decision rule", _decision(config, model, records),
             ("## Results (95% intervals: bootstrap over the images; exact binomial where a share is 0% or 100%)"), _results(evals, card),
             notes.get("results", ""),
             "## Calibration", _calibration(evals, records, model is not None),
             "## Prediction sets (\"can't tell\")", _conformal(evals, records, model is not None),
             "## In-domain check", _domain(records, model is not None), notes.get("domain", ""),
             "## Intended use and limits", _use(meta, config), notes.get("use", ""),
             "## Retrain it", notes.get("retrain") or code_block(train_command(config, roots=roots), "bash")]
    return "\n\n".join(p.strip() for p in parts if p and p.strip()) + "\n"


def _model_file(d: Path):
    """The run's ModelFile, or None when the folder has no model.pt (example runs)."""
    from cxrdemo.model import checkpoint  # torch: only for runs that have weights

    return checkpoint.load(model_path(d)) if has_model(d) else None


def _name(s: object) -> str:
    """A user-derived name as Markdown that shows its characters (plain names stay as they are)."""
    s = str(s)
    plain = _SAFE.fullmatch(s) and not (" " in s and "_" in s) and not re.match(r"\d+[.)] ", s)  # emphasis, list
    return s if plain else escape_markdown(s)


def _estimates(e: dict) -> dict[str, metrics.Estimate]:
    """An evaluation's metrics with their intervals (exact where a proportion is 0 or 1: metrics.estimates)."""
    return metrics.estimates({k: (e.get("metrics") or {}).get(k) for k, _ in METRICS}, e.get("ci95") or {},
                             e.get("confusion"))


# ---------------------------------------------------------------- what the folder holds

def _own_test_split(d: Path, records: dict) -> dict | None:
    """The run's test split as an evaluation (in-distribution) with bootstrap intervals; None without test results."""
    from cxrdemo.model import predictions

    tm = runs.read_test_metrics(d) or {}
    y, probs = tm.get("y_true"), tm.get("probs")
    if (y is None or probs is None) and (d / predictions.FILE).is_file():
        p = predictions.read(d / predictions.FILE)
        y, probs = p.y_true.tolist(), p.probs.tolist()
    if not tm or not tm.get("n"):
        return None
    classes = tm.get("classes") or []
    out = {"data": "its test split", "split": "", "label": "in-distribution", "n": tm["n"], "own": True,
           "counts": [int(sum(r)) for r in tm.get("confusion") or []], "classes": classes,
           "confusion": tm.get("confusion"),
           "metrics": {k: tm[k] for k, _ in METRICS if isinstance(tm.get(k), (int, float))}, "ci95": {},
           "calibration": tm.get("calibration") or {}, "coverage": tm.get("coverage") or []}
    if y is not None and probs is not None and len(y):
        y, probs = np.asarray(y, dtype=np.int64), np.asarray(probs, dtype=np.float64)
        found = metrics.metric_intervals(y, probs, classes or list(range(probs.shape[1])), tm.get("threshold"))
        out["ci95"] = {k: (e.low, e.high) for k, e in found.items() if e.method == "bootstrap"}
        if not out["calibration"]:  # trained before ECE was saved: measure it from the saved probabilities
            out["calibration"] = _ece_from_probs(probs, y, records)
    return out


def _ece_from_probs(probs: np.ndarray, y: np.ndarray, records: dict) -> dict:
    """ECE (15 bins, top label) with its interval, before and (given a calibration record) after calibration."""
    out = {"ece_before": calibration.expected_calibration_error(probs, y),
           "ece_before_ci": list(calibration.ece_interval(probs, y))}
    if records.get("calibration"):
        from cxrdemo.model import trust  # torch: only when a card needs the calibration applied

        fitted = trust.Trust.from_records(records)
        cal = fitted.probabilities(np.log(np.clip(probs, 1e-12, 1)))  # softmax(log p) = p: the logits up to a shift
        out.update(temperature=fitted.temperature, ece_after=calibration.expected_calibration_error(cal, y),
                   ece_after_ci=list(calibration.ece_interval(cal, y)))
    return out


def _set_name(e: dict) -> str:
    return "its test split" if e.get("own") else f"{_name(Path(str(e.get('data', '?'))).name)}/{_name(e.get('split'))}"


# ---------------------------------------------------------------- sections

def _recipe(run_id: str, config: dict, meta: dict, status: dict, card: dict) -> str:
    backbone = config.get("backbone", "?")
    try:
        freeze = freeze_words(config.get("freeze", "none"), backbone)
    except (KeyError, ValueError, RunError):  # a backbone this version no longer has
        freeze = str(config.get("freeze"))
    minutes = card.get("train_minutes")
    if minutes is None and status.get("finished") and status.get("started"):
        minutes = round((status["finished"] - status["started"]) / 60, 1)
    stages = card.get("stages") or []
    schedule = "; then ".join(f"{s['recipe']['epochs']} epochs at {s['recipe']['img_size']} px"
                              f"{' from stage ' + str(i) if i else ''} (run `{s['run_id']}`, {s['minutes']} min)"
                              for i, s in enumerate(stages))
    classes = ", ".join(_name(c) for c in (meta.get("dataset") or {}).get("classes") or [])
    epochs = config.get("epochs", "?")
    c = config.get
    lines = [f"- **Run:** `{_name(run_id)}`; classes {classes or 'not recorded'}.",
             (f"- **Backbone:** `{_name(backbone)}`; starting weights: {_name(init_words(c('init', '?')))}; "
              f"freeze level {freeze}; head {_name(c('head', 'linear'))}."),
             (f"- **Training:** {epochs} epoch{'' if epochs == 1 else 's'} at {c('img_size', '?')} px, batch "
              f"{c('batch_size', '?')}, learning rate {c('lr', '?')}, {c('optimizer', '?')}, augmentation "
              f"{c('augment', '?')}, class balance {c('balance', '?')}, seed {c('seed', '?')}; best epoch chosen by "
              f"{c('select', '?')}."),
             (f"- **Arithmetic:** {meta.get('precision') or c('precision', '?')} on {meta.get('device', 'cpu')} "
              f"({meta.get('threads', '?')} threads); the saved weights are float32.")]
    if schedule:
        lines.append(f"- **Schedule:** {schedule}.")
    if minutes is not None:
        lines.append(f"- **Training time:** {minutes} minutes on the computer that trained it.")
    return "\n".join(lines)


def _population(meta: dict, config: dict, model) -> str:
    """The one line of whom the model learnt from: model.pt's record, or (a run without weights) what it recorded."""
    if model is not None:
        return population_line(model.population, _name) + _CHECKED * bool(model.population and
                                                                          model.population.age_years)
    try:  # an example run: what training would have recorded, from its config.json
        found = training_population(Population.stated(config.get("population_age", ""),
                                                      config.get("population_source", "")),
                                    Population.from_record((meta.get("dataset") or {}).get("population"))
                                    if (meta.get("dataset") or {}).get("population") else None, None, False)
    except ConfigError:
        found = None
    return population_line(found, _name) + _CHECKED * bool(found and found.age_years)


_CHECKED = (" Diagnosis and `predict` compare each patient's age (from a DICOM header, or as the user gives it) with "
            "these ages and flag a patient outside them.")


def _data(meta: dict, config: dict) -> str:
    ds = meta.get("dataset") or {}
    if not ds:
        return (f"Dataset **{_name(Path(str(config.get('data', '?'))).name)}**; the run did not record the scan "
                "summary of its data (how many images per split and class).")
    classes = ds.get("classes") or []
    counts = ds.get("counts") or {}
    rows = "\n".join(f"| {split} | " + " | ".join(str((counts.get(split) or {}).get(c, 0)) for c in classes)
                     + f" | {(ds.get('totals') or {}).get(split, '')} |" for split in ("train", "val", "test"))
    head = f"| split | {' | '.join(_name(c) for c in classes)} | total |\n|---|" + "---|" * (len(classes) + 1)
    how = ("split by patient from one folder by the app" if ds.get("auto_split")
           else "train/val/test folders as given")
    skipped = ds.get("n_skipped") or 0
    lines = [f"Dataset **{_name(ds.get('name') or Path(str(config.get('data', '?'))).name)}** ({how}; split seed "
             f"{config.get('split_seed', 0)}"
             + (f", at most {config['max_images']} images per split" if config.get("max_images") else "") + "). "
             + f"{skipped} file{'' if skipped == 1 else 's'} skipped by the scan"
             + (f", {meta['n_decode_skipped']} that could not be decoded" if meta.get("n_decode_skipped") else "")
             + ".", f"{head}\n{rows}" if classes else ""]
    lines += [f"- {_name(n)}" for n in ds.get("notes") or []]
    return "\n\n".join(x for x in lines if x)


def _decision(config: dict, model, records: dict) -> str:
    rule = (model.decision.rule if model else None) or config.get("threshold", "argmax")
    value = model.decision.value if model else None
    text = f"The model answers with {rule_words(rule)} (`--threshold {rule}`)."
    if value is not None:
        pos = _name(model.classes[1])
        text += f" It calls {pos} when p({pos}) reaches {numbers.percent(value)} on the network's own scale"
        if records.get("calibration"):
            from cxrdemo.model import trust  # torch: only when a card needs the calibration applied

            text += (f", which is {numbers.percent(trust.Trust.from_records(records).cut(value))} on the calibrated "
                     "scale the app shows (the same images cross it)")
        text += f"; the cut is saved in {MODEL_FILE}."
    return text


def _md_names(classes) -> list[str]:
    # Class names are folder names: inert in the card's Markdown table (links, images, a '|' that splits a cell).
    return [escape_markdown(c) for c in classes]


def _results(evals: list[dict], card: dict) -> str:
    card_classes = next((e["classes"] for e in evals if e.get("classes")), None) or ("NORMAL", "PNEUMONIA")
    if not evals:
        return "This run has no test results: its dataset has no test images, or it stopped before testing."
    rows = "\n".join(f"| {_set_name(e)} | {e.get('label', 'in-distribution')} | {e.get('n', '?')}"
                     + (f" ({' : '.join(map(str, e['counts']))})" if e.get("counts") else "") + " | "
                     + " | ".join(numbers.estimate(_estimates(e).get(k), _md_names(e.get("classes") or card_classes))
                                  for k, _ in METRICS) + " |" for e in evals)
    table = ("| evaluation set | label | images (per class) | " + " | ".join(lbl for _, lbl in METRICS)
             + " |\n|---|---|---|" + "---|" * len(METRICS) + "\n" + rows)
    if all(e.get("own") for e in evals):
        table += ("\n\nMeasured on this run's own test split only: images drawn like the training images "
                  "(in-distribution). No shifted set was measured, so expect it to do worse on films from elsewhere.")
    return table


def _calibration(evals: list[dict], records: dict, has_model: bool) -> str:
    rec = records.get("calibration") or {}
    if rec:
        bias = rec.get("bias") or []
        shift = f", bias {bias[-1] - bias[0]:+.3f}" if len(bias) >= 2 and any(bias) else ""
        how = rec.get("method", "temperature scaling")
        text = (f"Probabilities are calibrated by {how}: T = {rec['temperature']:.3f}{shift}, fitted on the "
                f"{rec.get('n_val', '?')} validation images"
                + (" (and their perturbed copies: contrast, gamma, blur, noise and positioning as from another "
                   "site, so the probabilities hold up better on shifted films)." if "perturbed" in how else "."))
        if "ece_val_before" in rec:
            text += f" Validation ECE {rec['ece_val_before']:.3f} before, {rec['ece_val_after']:.3f} after."
    elif has_model:
        text = "This model has no calibration record: its probabilities are scores, not risks."
    else:
        text = f"The calibration is recorded in {MODEL_FILE}, which this run does not ship."
    rows = [f"| {_set_name(e)} | {numbers.with_interval('ece', c.get('ece_before'), c.get('ece_before_ci'))} | "
            f"{numbers.with_interval('ece', c.get('ece_after'), c.get('ece_after_ci'))} |"
            for e in evals for c in [e.get("calibration") or {}] if c]
    if rows:
        text += ("\n\nExpected calibration error (ECE: 15 equal-width bins on the top-label confidence; 0 is perfect), "
                 "95% bootstrap intervals:\n\n| evaluation set | ECE before | ECE after |\n|---|---|---|\n"
                 + "\n".join(rows))
    unmeasured = [_set_name(e) for e in evals if not e.get("calibration")]
    if unmeasured:
        text += f"\n\nECE not measured on {', '.join(unmeasured)}."
    return text


def _conformal(evals: list[dict], records: dict, has_model: bool) -> str:
    from cxrdemo.views.compare import coverage_rows

    levels = (records.get("conformal") or {}).get("levels") or []
    if levels:
        text = ("Class-conditional split-conformal sets, fitted on the calibrated validation probabilities: "
                + "; ".join(f"{lv['level']:.0%} " + ("fitted on " + ", ".join(
                    f"{n} {_name(c)}" for n, c in zip(lv.get("n", []), lv.get("classes", [])))
                    if lv.get("ok") else "not offered (see below)") for lv in levels) + ". The set shown always "
                "holds the verdict, reads 'both' where the conformal set is empty or a check flags the image (the "
                "promise covers only images like the validation images), and at 95% holds the 90% set (nested).")
    else:
        text = ("This model has no prediction-set record." if has_model
                else f"The prediction-set records are in {MODEL_FILE}, which this run does not ship.")
    rows, both = [], "answers 'both'"
    for e in evals:
        for r in coverage_rows({"coverage": e.get("coverage") or []}):
            rows.append(f"| {_set_name(e)} | {r['promised']} | {r['reached']} | "
                        f"{r.get('reached by the sets shown', '—')} | "
                        f"{r.get('mean set size', '—')} | "
                        f"{_name(r['note'] if r.get('note') not in (None, '', '—') else r.get(both, '—'))} |")
    if rows:
        text += ("\n\nCoverage on each evaluation set (the promise holds only for images drawn like the validation "
                 "images):\n\n| evaluation set | promised | reached | reached by the sets shown | mean set size | "
                 "answers 'both' |\n|---|---|---|---|---|---|\n" + "\n".join(rows))
    return text


def _domain(records: dict, has_model: bool) -> str:
    d = records.get("domain") or {}
    if not d:
        if not has_model:
            return f"The in-domain cut-off is recorded in {MODEL_FILE}, which this run does not ship."
        return "This model has no in-domain description: it answers for any image, however unlike its training images."
    transform = "signed square root of the " if d.get("transform") == "sqrt" else ""
    layers = d.get("layers", 1)
    where = ("penultimate features, the numbers the head sees" if layers == 1
             else f"features of the last {layers} stages")
    if d.get("parts"):  # one description per stage (model/domain.StagedDomainRecord)
        how = {"max": "the largest of them", "sum": "their sum"}.get(d.get("combine"), d.get("combine", "?"))
        scale = 100 * float(d["parts"][0].get("quantile", 0))
        what = (f"Mahalanobis distance to the nearest class, stage by stage, on the {transform}pooled {where}; each "
                f"stage's distance divided by the one {scale:g}% of validation images stay under, then {how}")
    else:
        what = f"Mahalanobis distance on the {transform}pooled {where}"
    return (f"An image is flagged as unlike the training images when its distance to the nearest class of the "
            f"{d.get('n_train', '?'):,} training images exceeds **{d['cutoff']:.2f}** ({what}; method "
            f"{d.get('method', '?')}). "
            f"How the cut-off was chosen: the distance that {100 * d['quantile']:g}% of the {d.get('n_val', '?')} "
            f"validation images stay under — on validation images only.")


def _use(meta: dict, config: dict) -> str:
    ds = meta.get("dataset") or {}
    classes = ", ".join(_name(c) for c in ds.get("classes") or []) or "its classes"
    return (f"For teaching transfer learning and heatmaps. Trained on "
            f"{_name(ds.get('name') or Path(str(config.get('data', '?'))).name)} only: it answers one of {classes} "
            "for any image it is given, and its numbers hold only for images like its own. Not for clinical use: "
            "not a medical device, not validated on patients.")


def intended_use(run_dir: str | Path) -> str:
    """The card's 'Intended use and limits' paragraph of a run (Markdown), for the report."""
    d = Path(run_dir)
    meta = runs.read_json(d / "config.json") if (d / "config.json").is_file() else {}
    card = runs.read_json(d / EVALUATION_FILE) if (d / EVALUATION_FILE).is_file() else {}
    model = _model_file(d)
    config = dict(meta.get("config") or (model.config if model else {}))
    return " ".join(p for p in (_use(meta, config), (card.get("notes") or {}).get("use", "")) if p)


def train_command(config: dict, init: str | None = None, roots: Roots = None) -> str:
    """The `python -m cxrdemo train` line that repeats a recipe (flags that differ from the defaults)."""
    defaults = TrainConfig().to_dict()
    flags = " ".join(f"--{k.replace('_', '-')} {init if k == 'init' and init else v}" for k, v in config.items()
                     if k in defaults and k != "data" and v != defaults[k])
    data = shown_folder(str(config.get("data", "DATA")), roots)
    return f"python -m cxrdemo train --data {shlex.quote(data)} {flags}".rstrip()


CARD_SOURCES = ("config.json", "status.json", "test_metrics.json", "test_predictions.csv", MODEL_FILE, EVALUATION_FILE)


def card_stamp(run_dir: str | Path) -> tuple:
    """When each file the card reads last changed: a new stamp means a new card."""
    d = Path(run_dir)
    return tuple((name, (d / name).stat().st_mtime_ns if (d / name).is_file() else 0) for name in CARD_SOURCES)


def card_file_name(run_dir: str | Path) -> str:
    """'MODEL_CARD-<run>.md': the download's file name."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(run_dir).resolve().name)[:80] or "run"
    return f"MODEL_CARD-{name}.md"
