"""Measure calibration and conformal sets of a model: fitted on its validation split, reported on held-out sets.

Everything (temperature, conformal quantiles) is chosen on the model's own validation split only, the split its
checkpoint and decision threshold were chosen on; cxr-dev test and cxr-shift test are only measured.
Usage (from the repository root): PYTHONPATH=. python scripts/measure_trust.py --data-dir DIR [--run demo]
[--out docs/trust_measurements.md]   (a few minutes on 2 CPU cores, most of it decoding images)
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrdemo.data import imageio
from cxrdemo.diagnosis import predict
from cxrdemo.model import calibration as cal
from cxrdemo.model import checkpoint
from cxrdemo.model import conformal as cf
from cxrdemo.model import metrics, trust

REPO = Path(__file__).resolve().parent.parent
# (name, dataset folder under --data-dir, split, what it is)
EVAL_SETS = (("cxr-dev test", "cxr-dev", "test", "in-distribution: drawn like the training data"),
             ("cxr-shift test", "cxr-shift", "test", "shifted: the original Kermany test split, 224 x 224"))


@dataclass
class ModelUnderTest:
    """What this script needs of a loaded model, read in one place."""

    loaded: predict.LoadedModel
    classes: tuple[str, ...]
    img_size: int
    intensity: str
    threshold: float | None  # the uncalibrated p(class 1) cut of the model's decision rule
    config: dict


def load(run: str) -> ModelUnderTest:
    """The model under test. The model-file API is being rewritten (model/checkpoint: `preprocessing` and
    `decision` records); read either shape here so the rest of the script does not care."""
    m = predict.load_model(run)
    pre = getattr(m, "preprocessing", None)
    intensity = pre.intensity if pre is not None else m.intensity
    threshold = m.decision.value if hasattr(m, "decision") else m.threshold
    return ModelUnderTest(m, tuple(m.classes), int(m.img_size), intensity, threshold, dict(m.config or {}))


@torch.inference_mode()
def logits_of(model: ModelUnderTest, root: Path, split: str,
              seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(logits NxK float64, labels N, which images the in-domain check flags) of one split, preprocessed exactly
    as predict.predict_split does."""
    try:
        from cxrdemo.data.cache import load_images
        from cxrdemo.data.scan import scan_dataset
    except ImportError:  # before data/dataset.py was split into scan and cache
        from cxrdemo.data.dataset import load_images, scan_dataset
    scan = scan_dataset(root, seed=seed, require_train=False)
    if tuple(scan.classes) != model.classes:
        raise SystemExit(f"{root} has classes {scan.classes}, the model {model.classes}.")
    cached = load_images(scan.splits[split], model.img_size)
    images = imageio.adjust_intensity(cached.images, model.intensity)
    m = model.loaded
    with m.lock:
        logits, feats = trust.logits_and_features(m.net, images, m.preprocessing, layers=trust.layers_of(m.domain))
        scores = trust.domain_scores(m.net, images, m.preprocessing, m.domain, feats)
    return logits.astype(np.float64), cached.labels.numpy(), trust.outside_domain(m.domain, scores)


def val_images(model: ModelUnderTest, root: Path, seed: int):
    """The validation split as the cache holds it (uint8, intensity applied), for the perturbed copies."""
    from cxrdemo.data import CachedImages
    from cxrdemo.data.cache import load_images
    from cxrdemo.data.scan import scan_dataset

    c = load_images(scan_dataset(root, seed=seed, require_train=False).splits["val"], model.img_size)
    return CachedImages(imageio.adjust_intensity(c.images, model.intensity), c.labels, c.paths, c.skipped)


def measure(name: str, logits: np.ndarray, y: np.ndarray, model: ModelUnderTest, t: trust.Trust,
            records: dict[float, cf.ConformalRecord], resamples: int, outside: np.ndarray | None = None) -> dict:
    """ECE before/after (with intervals), accuracy of the verdict, and the sets' coverage at each level (the sets
    shown: every class for the images the in-domain check flags, `outside`)."""
    raw, calibrated = cal.apply_calibration(logits, 1.0), t.probabilities(logits)
    verdicts = metrics.predict_labels(raw, model.threshold)
    same = metrics.predict_labels(calibrated, t.cut(model.threshold))
    if (same != verdicts).any():
        raise SystemExit(f"{name}: the threshold on the calibrated scale changed {(same != verdicts).sum()} decisions.")
    row = {"set": name, "n": len(y), "accuracy": float((verdicts == y).mean()),
           "ece_before": cal.expected_calibration_error(raw, y), "ci_before": cal.ece_interval(raw, y, resamples),
           "ece_after": cal.expected_calibration_error(calibrated, y),
           "ci_after": cal.ece_interval(calibrated, y, resamples), "sets": {},
           "flagged": float(np.mean(outside)) if outside is not None else float("nan")}
    for level, record in records.items():
        shown = cf.coverage_report(cf.set_masks(calibrated, record, verdicts, outside), y, level, model.classes)
        raw = cf.coverage_report(cf.conformal_masks(calibrated, record), y, level, model.classes)
        unflagged = cf.coverage_report(cf.set_masks(calibrated, record, verdicts), y, level, model.classes)
        row["sets"][level] = {**shown, "raw": raw, "without_flag": unflagged}
    return row


def cpu_model() -> str:
    """The CPU's model name from lscpu (timings and float results depend on it)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "unknown")


def ci(pair: tuple[float, float]) -> str:
    """An interval as [low, high] with three decimals."""
    return f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def report(model: ModelUnderTest, t: trust.Trust, method: str, records: dict[float, cf.ConformalRecord], val_n: int,
           rows: list[dict], minutes: float) -> str:
    """The Markdown page: how it was fitted, one table for calibration, one for the sets, the issue's targets."""
    cut = t.cut(model.threshold)
    lines = [
        "# Trust measurements: calibration and conformal prediction sets",
        "",
        (f"Model: `{model.loaded.run_id}` ({model.config.get('backbone', '?')}), classes "
         f"{', '.join(model.classes)}. Made by `python scripts/measure_trust.py --data-dir DATA` in {minutes:.1f} min on "
         f"{cpu_model()}."),
        "",
        (f"**Fitted on validation only**: the calibration and the conformal quantiles are fitted on the model's own "
        f"validation split ({val_n} images of cxr-large/val, the split its checkpoint and its decision threshold "
        "were chosen on); the calibration also on two perturbed copies of those images (the acquisition "
        "augmentation). cxr-dev test and cxr-shift test are only measured, never fitted on."),
        "",
        *[f"- {name}: {what}" for name, _, _, what in EVAL_SETS],
        "",
        (f"- calibration: {method}: T = {t.temperature:.3f}, bias of {model.classes[-1]} "
         f"{t.bias[-1] - t.bias[0] if t.bias else 0.0:+.3f} (minimum NLL of softmax(z / T + b))"),
        (f"- decision threshold p({model.classes[-1]}) >= {model.threshold:.4f} (uncalibrated, from "
         f"{checkpoint.MODEL_FILE}) is p >= {cut:.4f} on the calibrated scale: the same decision for every image "
         "(checked on each set)"),
    ]
    for level, r in records.items():
        q = ", ".join(f"{c} {v:.4f} (n={n})" for c, v, n in zip(r.classes, r.qhat, r.n)) if r.ok else r.reason
        lines.append(f"- conformal {level:.0%}: qhat {q}")
    lines += ["", ("ECE: top label, 15 equal-width bins, 95% percentile bootstrap interval over images. "
              "Accuracy: the single label after the model's decision rule (the verdict the page shows)."), "",
              "| set | n | accuracy | ECE before | 95% CI | ECE after | 95% CI |", "|---|---:|---:|---:|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['n']} | {r['accuracy']:.3f} | {r['ece_before']:.3f} | {ci(r['ci_before'])} "
                     f"| {r['ece_after']:.3f} | {ci(r['ci_after'])} |")
    lines += ["", ("Prediction sets: class-conditional (Mondrian) split conformal on the calibrated probabilities. "
              "'Conformal set coverage' is the promise itself (1 - p_k <= qhat_k); the set shown adds the verdict "
              "and turns an empty conformal set, or the set of an image the in-domain check flags ('flagged'), into "
              "'both', so it covers at least as often. 'Both' = the model cannot tell at this coverage; 'gain' = "
              "shown coverage minus single-label accuracy; 'gain, flag not used' = the same without the in-domain "
              "repair."), "",
              "| set | promised | conformal set coverage | shown set coverage | single label | gain (points) | "
              "gain, flag not used | mean size | both | flagged | "
              + " | ".join(f"shown coverage {c}" for c in model.classes) + " |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(model.classes)]
    for r in rows:
        for level, s in r["sets"].items():
            per = " | ".join(f"{s['per_class'][c]['coverage']:.3f} (n={s['per_class'][c]['n']})" for c in model.classes)
            lines.append(f"| {r['set']} | {level:.0%} | {s['raw']['coverage']:.3f} | {s['coverage']:.3f} | "
                         f"{r['accuracy']:.3f} | "
                         f"{100 * (s['coverage'] - r['accuracy']):+.1f} | "
                         f"{100 * (s['without_flag']['coverage'] - r['accuracy']):+.1f} | {s['mean_size']:.3f} | "
                         f"{s['share_both']:.1%} | {r['flagged']:.1%} | {per} |")
    shift = next(r for r in rows if r["set"] == "cxr-shift test")
    dev = next(r for r in rows if r["set"] == "cxr-dev test")
    s90 = shift["sets"][cf.DEFAULT_LEVEL]
    checks = [
        ("cxr-shift ECE after calibration <= 0.05", shift["ece_after"] <= 0.05, f"{shift['ece_after']:.3f}"),
        ("cxr-shift sets at 90% cover >= 3 points more than the single label",
         s90["coverage"] - shift["accuracy"] >= 0.03, f"{100 * (s90['coverage'] - shift['accuracy']):+.1f} points"),
        ("cxr-shift mean set size at 90% <= 1.5", s90["mean_size"] <= 1.5, f"{s90['mean_size']:.3f}"),
        ("cxr-dev test coverage at 90% >= 85%", dev["sets"][cf.DEFAULT_LEVEL]["coverage"] >= 0.85,
         f"{dev['sets'][cf.DEFAULT_LEVEL]['coverage']:.3f}"),
    ]
    lines += ["", "Issue 15 targets (cxr-shift stands in for the held-out shifted paediatric films):", ""]
    lines += [f"- {'met' if ok else 'NOT met'}: {what} ({value})" for what, ok, value in checks]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="demo")
    ap.add_argument("--data-dir", required=True, help="the folder holding the evaluation sets (cxr-large, cxr-shift)")
    ap.add_argument("--out", default=str(REPO / "docs" / "trust_measurements.md"))
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args()
    start = time.time()
    model = load(args.run)
    seed = int(model.config.get("split_seed", 0))
    val_root = Path(args.data_dir) / Path(model.config.get("data", "cxr-large")).name
    z_val, y_val, out_val = logits_of(model, val_root, "val", seed)  # ONLY the validation split is fitted on
    z_pert = trust.perturbed_logits(model.loaded.net, val_images(model, val_root, seed).images,
                                    model.loaded.preprocessing)
    fitted = trust.fit_trust(y_val, z_val, z_pert, model.classes)  # the engine's own fit: validation + perturbed copies
    calib = fitted["calibration"]
    t = trust.Trust.from_records(fitted, args.run)
    records = t.conformal
    rows = [measure("cxr-large val (fitted on)", z_val, y_val, model, t, records, args.resamples, out_val)]
    for name, folder, split, _ in EVAL_SETS:
        z, y, outside = logits_of(model, Path(args.data_dir) / folder, split, seed)
        rows.append(measure(name, z, y, model, t, records, args.resamples, outside))
    text = report(model, t, calib["method"], records, len(y_val), rows, (time.time() - start) / 60)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
