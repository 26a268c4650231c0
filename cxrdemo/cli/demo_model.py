"""The shipped demo model: its recipe, one command to retrain it, and its model card with bootstrap intervals."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cxrdemo import paths
from cxrdemo.config import TrainConfig
from cxrdemo.data.scan import dataset_name
from cxrdemo.errors import ConfigError, RunError
from cxrdemo.model import metrics
from cxrdemo.runs import store as runs
from cxrdemo.views.words import rule_words

# The recipe, in two stages (progressive resizing): most of the learning at 128 px, where an epoch is cheap,
# then a short fine-tune at 224 px that starts from stage 1 through `--init run:<stage 1>` (an ordinary
# option: any user can chain runs the same way). Trained on cxr-large only; the trials behind it
# (docs/demo_model_trials.md) were also compared on cxr-shift, so its cxr-shift figures are somewhat optimistic.
# cnn5 rather than resnet18: close in the trials and 6 MB instead of 45 MB. The decision threshold keeps 95%
# specificity on validation rather than balancing it (Youden): on this recipe's trial models the fixed operating
# point kept a margin on shifted images that the balanced cut did not; 97% kept more of it but cost 11 points of
# sensitivity on images like the training data (docs/demo_model_trials.md).
DEMO_STAGES: tuple[dict, ...] = (
    dict(backbone="cnn5", init="scratch", freeze="none", img_size=128, batch_size=32, epochs=8, lr=1e-3,
         weight_decay=1e-4, step_size=0, gamma=0.1, patience=0, augment="acquisition", balance="sampler",
         ema=0.998, threshold="spec:0.95", select="val_auroc", seed=0),
    dict(img_size=224, epochs=4, lr=3e-4, step_size=0, ema=0.99),  # + init=run:<stage 1>, the rest as stage 1
)
DEMO_RECIPE: dict = DEMO_STAGES[0]
COPIED_FILES = ("model.pt", "config.json", "metrics.csv", "status.json", "test_metrics.json")


EVAL_LABELS = ("in-distribution", "shifted")


def parse_eval(spec: str) -> tuple[str, str, str]:
    """DIR[:SPLIT[:LABEL]] -> (dir, split, label); ConfigError with a sentence for an unknown label."""
    parts = spec.split(":")
    label = parts.pop() if len(parts) >= 3 else EVAL_LABELS[0]
    split = parts.pop() if len(parts) >= 2 else "test"
    if label not in EVAL_LABELS:
        raise ConfigError(f"--eval {spec}: the label must be {' or '.join(EVAL_LABELS)}, not {label!r}.")
    return ":".join(parts), split or "test", label


def evaluate_model_on(run_dir: Path, data_root: str, split: str = "test", n_boot: int = 1000,
                      label: str = EVAL_LABELS[0]) -> dict:
    """Point estimates and 95% bootstrap intervals of a run's model on one split of a dataset."""
    import torch

    from cxrdemo.diagnosis.predict import load_model, split_logits
    from cxrdemo.model import trust

    model = load_model(str(run_dir), allow_path=True)
    y, logits, _ = split_logits(model, data_root, split)
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    point = metrics.classification_metrics(y, probs, model.classes, model.decision.value)
    ci = metrics.bootstrap_ci(y, probs, model.classes, model.decision.value, n_boot=n_boot)
    return {"data": str(data_root), "split": split, "label": label, "n": int(len(y)), "counts": np.bincount(y).tolist(),
            "metrics": {k: point[k] for k in ("accuracy", "sensitivity", "specificity", "auroc", "f1")},
            "ci95": ci, "confusion": point["confusion"],
            **trust.trust_metrics(logits, y, model.trust, model.decision.value, model.classes, n_boot)}


def build_demo_model(train_data: str, eval_sets: list[tuple[str, str, str]], out_dir: Path | None = None,
                     runs_dir: Path | None = None, echo=None, **overrides) -> dict:
    """Train the demo stages as normal runs (each from the last), evaluate the final one, install it as weights/demo."""
    from cxrdemo.runs.worker import execute_run

    out_dir = Path(out_dir or paths.demo_run_dir())
    stages, recipe = [], {}
    t_start = time.time()
    for i, stage in enumerate(DEMO_STAGES, 1):
        recipe = {**recipe, **stage, **overrides}
        if i > 1:
            recipe["init"] = f"run:{stages[-1]['run_id']}"
        config = TrainConfig(data=train_data, **recipe)
        d = runs.create_run(config, runs_dir, name=f"demo{i}")
        t0 = time.time()
        status = execute_run(d, echo=echo, runs_dir=runs_dir)
        if status.get("state") != "completed":
            raise RunError(f"Training stage {i} of the demo model {status.get('state')}: {status.get('error')}")
        stages.append({"run_id": d.name, "minutes": round((time.time() - t0) / 60, 1), "recipe": config.to_dict()})
    minutes = (time.time() - t_start) / 60
    evaluations = [evaluate_model_on(d, root, split, label=label) for root, split, label in eval_sets]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".demo-"))
    for name in COPIED_FILES:
        if (d / name).is_file():
            shutil.copy2(d / name, staging / name)
    card = {"run_id": d.name, "train_minutes": round(minutes, 1), "recipe": config.to_dict(), "stages": stages,
            "evaluations": evaluations, "trust": trust_summary(d)}
    # What ships names its data sets, never a folder of the machine it was built on (pass --data to use them).
    shipped = _names_only(card)
    if (staging / "config.json").is_file():
        runs.atomic_write_json(staging / "config.json", _names_only(runs.read_json(staging / "config.json")))
    runs.atomic_write_json(staging / "evaluation.json", shipped)
    (staging / "MODEL_CARD.md").write_text(model_card(shipped))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return card


def _names_only(obj):
    """A copy of a card or config.json with every `data` path replaced by the data set's name."""
    if isinstance(obj, dict):
        return {k: (dataset_name(v) if k == "data" and isinstance(v, str) else _names_only(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_names_only(x) for x in obj]
    return obj


def _fmt(m: dict, ci: dict, key: str) -> str:
    lo, hi = ci.get(key, (float("nan"), float("nan")))
    return f"{100 * m[key]:.1f}% ({100 * lo:.1f}–{100 * hi:.1f})" if key != "auroc" else f"{m[key]:.3f} ({lo:.3f}–{hi:.3f})"


def _train_command(recipe: dict, init: str | None = None) -> str:
    defaults = TrainConfig().to_dict()
    flags = " ".join(f"--{k.replace('_', '-')} {init if k == 'init' and init else v}" for k, v in recipe.items()
                     if k in defaults and k != "data" and v != defaults[k])
    return f"python -m cxrdemo train --data {recipe['data']} {flags}"


def model_card(card: dict) -> str:
    """The model card as Markdown: recipe, command, data, metrics with 95% bootstrap intervals, intended use."""
    r = card["recipe"]
    stages = card.get("stages") or [{"run_id": card["run_id"], "recipe": r, "minutes": card["train_minutes"]}]
    evals = " ".join(f"--eval {e['data']}:{e['split']}:{e.get('label', EVAL_LABELS[0])}" for e in card["evaluations"])
    rows = "\n".join(
        f"| {Path(e['data']).name}/{e['split']} | {e['n']} ({' : '.join(map(str, e['counts']))}) | "
        f"{_fmt(e['metrics'], e['ci95'], 'accuracy')} | {_fmt(e['metrics'], e['ci95'], 'sensitivity')} | "
        f"{_fmt(e['metrics'], e['ci95'], 'specificity')} | {_fmt(e['metrics'], e['ci95'], 'auroc')} |"
        for e in sorted(card["evaluations"], key=lambda e: e.get("label") != "shifted"))  # the shifted set leads
    schedule = "; then ".join(
        f"{s['recipe']['epochs']} epochs at {s['recipe']['img_size']} px"
        f"{' from stage ' + str(i) if i else ''} (run `{s['run_id']}`, {s['minutes']} min)"
        for i, s in enumerate(stages))
    commands = "\n".join(_train_command(s["recipe"], "run:<the run id stage " + str(i) + " printed>" if i else None)
                         for i, s in enumerate(stages))
    precision = "bfloat16 mixed precision where the CPU has AMX, else float32" if r.get("precision") == "auto" \
        else r.get("precision", "float32")
    return f"""# Model card: cxrdemo demo model

**Research and teaching demo — not for clinical use.** This model must not be used to diagnose,
triage or treat anyone.

- **Task:** paediatric chest X-ray, NORMAL vs PNEUMONIA (bacterial and viral together).
- **Architecture:** `{r['backbone']}` from scratch (no ImageNet weights), {r['img_size']} px input,
  greyscale replicated to 3 channels, ImageNet mean/std.
- **Decision:** PNEUMONIA when p(PNEUMONIA) reaches {rule_words(r['threshold'])}
  (`--threshold {r['threshold']}`); the threshold is saved in `model.pt`.
- **Schedule:** {schedule}. Training arithmetic: {precision}; the saved weights are float32.
- **Training data:** `cxr-large` (4,353 train / 488 val images from the original Kermany *train* split,
  NORMAL:PNEUMONIA = 1:2.9), Kermany, Zhang, Goldbaum et al., *Cell* 2018,
  doi:10.1016/j.cell.2018.02.010, data doi:10.17632/rscbjbr9sj.2, CC BY 4.0. Never trained or tuned
  on `cxr-shift`; the trials that chose the recipe and the decision rule were also measured there
  ([docs/demo_model_trials.md](../../docs/demo_model_trials.md)), so its `cxr-shift` figures are
  somewhat optimistic for unseen sites.
- **Training time:** {card['train_minutes']} minutes in all on this machine's CPU.

## Retrain it (one command)

```bash
python -m cxrdemo demo-model --data {r['data']} {evals}
```

which runs, one after the other,

```bash
{commands}
```

evaluates the last one and installs it in `weights/demo/` with this card.

## Results (95% bootstrap intervals, 1,000 resamples of the images)

| test set | images (N : P) | accuracy | sensitivity | specificity | AUROC |
|---|---|---|---|---|---|
{rows}

`cxr-dev/test` is drawn like the training data; `cxr-shift/test` comes from the original Kermany
*test* split, which is shifted (a different acquisition period) — the honest measure of how the recipe
generalises.

{_target_line(card)}

## Intended use and limits

For demonstrating transfer learning and Grad-CAM in teaching sessions. Paediatric AP/PA radiographs
from one hospital only; it has never seen adults, lateral views, devices or other diseases, and it
will answer NORMAL or PNEUMONIA for any image, including ones that are not chest X-rays (the app
warns first). {_trust_text(card)}
"""


TARGET = {"accuracy": 0.928, "specificity": 0.85, "auroc": 0.97}  # issue #6, on cxr-shift/test


def trust_summary(run_dir: Path) -> dict:
    """What the card states about a model's trust records (temperature, sets, in-domain cut-off); {} without."""
    from cxrdemo.model import checkpoint

    records = checkpoint.load(Path(run_dir) / checkpoint.MODEL_FILE).records
    if not records:
        return {}
    dom = records.get("domain") or {}
    return {"temperature": records.get("calibration", {}).get("temperature"),
            "conformal": [{k: c[k] for k in ("level", "qhat", "n", "ok")} for c in records.get("conformal", {}).get(
                "levels", [])],
            "domain": {k: dom.get(k) for k in ("cutoff", "quantile", "n_train", "n_val", "method")} if dom else {}}


def _trust_text(card: dict) -> str:
    """The card's paragraph on calibration, prediction sets and the in-domain check ('' when the model has none)."""
    t = card.get("trust") or {}
    if not t:
        return "Its probabilities are not calibrated risks."
    d = t.get("domain") or {}
    levels = ", ".join(f"{c['level']:.0%}" for c in t.get("conformal", []) if c.get("ok"))
    text = (f"Its probabilities are calibrated by temperature scaling (T = {t['temperature']:.3f}, fitted on the "
            f"validation split); the decision threshold is applied on the same scale. Prediction sets (class-"
            f"conditional split conformal, fitted on validation) are offered at {levels or 'no level'}.")
    if d:
        text += (f" In-domain check: an image whose distance to the {d['n_train']:,} training images (Mahalanobis, "
                 f"penultimate features) exceeds {d['cutoff']:.2f} — the distance {100 * d['quantile']:g}% of the "
                 f"{d['n_val']} validation images stay under — is flagged as unlike the training images.")
    return text


def _target_line(card: dict) -> str:
    shift = next((e for e in card["evaluations"] if Path(e["data"]).name == "cxr-shift"), None)
    if shift is None:
        return ""
    missed = [f"{k} {shift['metrics'][k]:.3f} < {v}" for k, v in TARGET.items() if shift["metrics"][k] < v]
    goal = ", ".join(f"{k} ≥ {v}" for k, v in TARGET.items())
    verdict = "met." if not missed else f"**not met** ({'; '.join(missed)})."
    return (f"**Project target on cxr-shift** ({goal}): {verdict} What was tried — every from-scratch recipe "
            "landed at AUROC 0.94–0.96 — and how the decision rule was chosen: docs/demo_model_trials.md.")
