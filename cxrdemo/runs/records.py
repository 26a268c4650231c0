"""Add the trust records (calibration, conformal, domain) to a finished run's model.pt, without retraining.

The run's own train and validation splits are rebuilt from its config (dataset, split seed, image cap) and checked
against the counts it recorded when it trained: fitting on other images would not be "chosen on validation".
The weights are untouched; model/checkpoint rewrites the file with the records added.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cxrdemo import data
from cxrdemo.errors import DatasetError, RunError
from cxrdemo.model import checkpoint, trust
from cxrdemo.runs import store


def _data_root(run_dir: Path, config: dict, data_dir: str | None) -> Path:
    """The dataset the run trained on: --data when given, else the folder its config records."""
    if data_dir:
        return data.resolve_data_root(data_dir)
    recorded = config.get("data") or ""
    meta = {}
    if (run_dir / "config.json").is_file():
        meta = store.read_json(run_dir / "config.json")
    candidates = [recorded, (meta.get("dataset") or {}).get("root", "")]
    for c in candidates:
        if c and (c.strip().lower() == "demo" or Path(c).expanduser().is_dir()):
            return data.resolve_data_root(c)
    raise DatasetError(f"The dataset this run trained on ({recorded or 'not recorded'}) is not on this machine; "
                       "give its folder with --data.")


def _check_counts(run_dir: Path, scan: data.DatasetScan) -> None:
    """Refuse a dataset whose train/val split differs from the one the run recorded."""
    path = run_dir / "config.json"
    recorded = (store.read_json(path).get("dataset") or {}).get("counts") if path.is_file() else None
    if not recorded:
        return
    for split in ("train", "val"):
        now = scan.counts().get(split)
        if recorded.get(split) and now != recorded[split]:
            raise DatasetError(f"The {split} split of this dataset ({now}) differs from the one the run trained on "
                               f"({recorded[split]}): give the run's own dataset with --data.")


def add_trust_records(run: str, runs_dir: str | Path | None = None, data_dir: str | None = None,
                      say: Callable[[str], None] = lambda s: None, domain_only: bool = False) -> checkpoint.ModelFile:
    """Fit calibration, conformal and domain records on the run's own splits and add them to its model.pt
    (`domain_only`: refit the in-domain description alone; the calibration and the sets stay as they are)."""
    run_dir = store.run_dir(run, runs_dir, allow_path=True)
    path = run_dir / checkpoint.MODEL_FILE
    model = checkpoint.load(path)
    cfg = model.config
    root = _data_root(run_dir, cfg, data_dir)
    scan = data.scan_dataset(root, seed=int(cfg.get("split_seed", 0)), max_per_split=int(cfg.get("max_images", 0)))
    if tuple(scan.classes) != model.classes:
        raise DatasetError(f"The dataset's classes {list(scan.classes)} differ from the model's "
                           f"{list(model.classes)}.")
    _check_counts(run_dir, scan)
    pre = model.preprocessing
    cached = {}
    for split in ("train", "val"):
        if not scan.splits.get(split):
            raise DatasetError(f"The dataset {root} has no {split} images: the records need the run's own "
                               "training and validation splits.")
        say(f"Decoding the {split} images of {root}")
        cached[split] = pre.load(scan.splits[split])
    say("Fitting the temperature, the prediction sets and the in-domain description")
    net = checkpoint.rebuild_net(model)
    if domain_only:
        say("Describing the training images (the in-domain check)")
        records = {"domain": trust.fit_domain_record(net, pre, cached["train"], cached["val"])}
        records = {k: v for k, v in records.items() if v is not None}
    else:
        say("Fitting the temperature, the prediction sets and the in-domain description")
        records = trust.fit_records(net, pre, model.classes, cached["train"], cached["val"])
    if "domain" not in records:
        raise RunError("The training images could not be described (a class has no training image).")
    return checkpoint.update_records(path, **records)
