"""The shipped demo model: its recipe, one command to retrain it, and what its model card adds (views/model_card)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cxrdemo import fileio, paths
from cxrdemo.config import TrainConfig
from cxrdemo.data.scan import dataset_name
from cxrdemo.errors import ConfigError, RunError
from cxrdemo.model import checkpoint, metrics
from cxrdemo.population import KERMANY_CHILDREN
from cxrdemo.runs import store as runs
from cxrdemo.views.model_card import model_card, train_command

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
# Whom the films came from, written into the installed model.pt: cxr-large (read-only, shared) has no POPULATION.json.
DEMO_POPULATION = KERMANY_CHILDREN
COPIED_FILES = (checkpoint.MODEL_FILE, "config.json", "metrics.csv", "status.json", "test_metrics.json")


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
    from cxrdemo.diagnosis.predict import load_model
    from cxrdemo.model import evaluation

    model = load_model(str(run_dir), allow_path=True)
    images, _ = evaluation.load_split(model.preprocessing, model.classes, data_root, split)
    with model.lock:
        point, out = evaluation.evaluate_split(model.net, model.preprocessing, model.classes, model.decision.value,
                                               model.trust, images, resamples=n_boot)
    y = out.labels
    ci = metrics.bootstrap_ci(y, out.probs, model.classes, model.decision.value, n_boot=n_boot)
    return {"data": str(data_root), "split": split, "label": label, "n": int(len(y)), "counts": np.bincount(y).tolist(),
            "metrics": {k: point[k] for k in ("accuracy", "sensitivity", "specificity", "auroc", "f1")},
            "ci95": ci, "confusion": point["confusion"],
            **{k: point[k] for k in ("calibration", "coverage") if k in point}}


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
            "evaluations": evaluations}
    write_population(staging)
    # What ships names its data sets, never a folder of the machine it was built on (pass --data to use them).
    if (staging / "config.json").is_file():
        runs.atomic_write_json(staging / "config.json", _names_only(runs.read_json(staging / "config.json")))
    write_card(staging, card)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return card


def write_population(out_dir: Path) -> None:
    """Record whom the demo model learnt from in its model.pt (weights untouched); nothing when it is already there."""
    from cxrdemo.model import checkpoint  # torch: only when a model file is written

    path = Path(out_dir) / checkpoint.MODEL_FILE
    if checkpoint.load(path).population != DEMO_POPULATION:
        checkpoint.set_population(path, DEMO_POPULATION)


def _names_only(obj):
    """A copy of a card or config.json with every `data` path replaced by the data set's name."""
    if isinstance(obj, dict):
        return {k: (dataset_name(v) if k == "data" and isinstance(v, str) else _names_only(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_names_only(x) for x in obj]
    return obj


def _stage_command(recipe: dict, stage: int) -> str:
    init = f"run:<the run id stage {stage} printed>" if stage else None
    return train_command(recipe, init)


def demo_notes(card: dict) -> dict:
    """The demo model's own paragraphs of its model card (what the generic card cannot know), by section."""
    r = card["recipe"]
    stages = card.get("stages") or [{"recipe": r}]
    evals = " ".join(f"--eval {e['data']}:{e['split']}:{e.get('label', EVAL_LABELS[0])}" for e in card["evaluations"])
    commands = "\n".join(_stage_command(s["recipe"], i) for i, s in enumerate(stages))
    return {
        "data": ("Task: paediatric chest X-ray, NORMAL vs PNEUMONIA (bacterial and viral together). `cxr-large` "
                 "holds 4,353 train / 488 val images from the original Kermany *train* split (NORMAL:PNEUMONIA = "
                 "1:2.9): Kermany, Zhang, Goldbaum et al., *Cell* 2018, doi:10.1016/j.cell.2018.02.010, data "
                 "doi:10.17632/rscbjbr9sj.2, CC BY 4.0. Never trained or tuned on `cxr-shift`; the trials that chose "
                 "the recipe and the decision rule were also measured there "
                 "([docs/demo_model_trials.md](../../docs/demo_model_trials.md)), so its `cxr-shift` figures are "
                 "somewhat optimistic for unseen sites."),
        "results": ("`cxr-shift/test` comes from the original Kermany *test* split, which is shifted (a different "
                    "acquisition period): the honest measure of how the recipe generalises, listed first. "
                    "`cxr-dev/test` is drawn like the training data.\n\n" + _target_line(card)),
        "domain": ("Said plainly: the 99.5% quantile (rather than the 99% first suggested) and the signed square "
                   "root of the features were chosen after seeing the flag rates of every measured set, `cxr-shift` "
                   "included. Pooling all five trunk stages (issue 28) was chosen on validation images and proxy "
                   "sets only (photos, synthetic and other medical images, shifted chest films, one adult film in "
                   "11 framings), before `cxr-shift` was scored; scored once afterwards, it flags 2.9% (7 of 241) of "
                   "`cxr-shift`, above the 2% aimed for, and nothing was changed after seeing that "
                   "([docs/domain_measurements.md](../../docs/domain_measurements.md)). The cut-off value itself was "
                   "computed on validation images only."),
        "use": ("Paediatric AP/PA radiographs from one hospital only: it has never seen adults, lateral views, "
                "devices or other diseases (the in-domain check and the quality gate warn first, but they can miss).\n\n"
                "Its heatmaps often point at the neck and the apices rather than the lung fields: on the 20 built-in "
                "test films the GradCAM peak lies in the top quarter of the film for 10 (LayerCAM: 12), where a map "
                "spread evenly would put 5; the outer tenth of the film on every side holds 23% of the GradCAM "
                "energy (LayerCAM 25%), less than its 35% of the area, so its maps do not favour the film's edge as "
                "such. Diagnosis's faithfulness line and \"does the model look where I look?\" (a box on the "
                "finding, scored against every fast heatmap) show it film by film."),
        "retrain": (f"One command:\n\n```bash\npython -m cxrdemo demo-model --data {r['data']} {evals}\n```\n\n"
                    f"which runs, one after the other,\n\n```bash\n{commands}\n```\n\nevaluates the last one and "
                    "installs it in `weights/demo/` with this card. `python -m cxrdemo demo-model --card-only` "
                    "(with the same `--eval` sets) re-measures the installed model and rewrites this card without "
                    "retraining."),
    }


def write_card(out_dir: Path, card: dict) -> str:
    """Write evaluation.json (names only, with the demo notes) and MODEL_CARD.md, made by the one card generator."""
    shipped = _names_only({**card, "name": "cxrdemo demo model"})
    shipped["notes"] = demo_notes(shipped)
    runs.atomic_write_json(Path(out_dir) / "evaluation.json", shipped)
    text = model_card(out_dir)
    fileio.atomic_write_bytes(Path(out_dir) / "MODEL_CARD.md", text.encode())
    return text


def refresh_card(eval_sets: list[tuple[str, str, str]], out_dir: Path | None = None) -> dict:
    """Re-measure the installed demo model on `eval_sets` (none: keep the recorded ones) and rewrite its card."""
    out_dir = Path(out_dir or paths.demo_run_dir())
    path = out_dir / "evaluation.json"
    if not checkpoint.has_model(out_dir) or not path.is_file():
        raise RunError(f"There is no installed demo model with its evaluation.json in {out_dir}: build it with "
                       "`python -m cxrdemo demo-model --data DIR`.")
    write_population(out_dir)
    card = runs.read_json(path)
    if eval_sets:
        card["evaluations"] = [evaluate_model_on(out_dir, root, split, label=label) for root, split, label in eval_sets]
    write_card(out_dir, card)
    return card


TARGET = {"accuracy": 0.928, "specificity": 0.85, "auroc": 0.97}  # issue #6, on cxr-shift/test


def _target_line(card: dict) -> str:
    shift = next((e for e in card["evaluations"] if Path(e["data"]).name == "cxr-shift"), None)
    if shift is None:
        return ""
    missed = [f"{k} {shift['metrics'][k]:.3f} < {v}" for k, v in TARGET.items() if shift["metrics"][k] < v]
    goal = ", ".join(f"{k} ≥ {v}" for k, v in TARGET.items())
    verdict = "met." if not missed else f"**not met** ({'; '.join(missed)})."
    return (f"**Project target on cxr-shift** ({goal}): {verdict} What was tried — every from-scratch recipe "
            "landed at AUROC 0.94–0.96 — and how the decision rule was chosen: docs/demo_model_trials.md.")
