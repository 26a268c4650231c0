"""Build cxrdemo/lesson_data from cxr-large: bacterial vs viral, viral vs normal, and a leakage set (Kermany, CC BY 4.0).

bacteria_virus/{train,val,test}/{BACTERIA,VIRUS}: one image per patient, patients disjoint across splits.
  train and val come from cxr-large *train* patients, test from cxr-large *val* patients only (the shipped demo
  model trained on cxr-large train, so lesson 1's test images were never seen by the model it transfers from).
virus_normal/{train,val,test}/{NORMAL,VIRUS}: as bacteria_virus, for viral pneumonia vs normal (transfer: the demo
  model's pneumonia features help here; CheXNet -> COVID-19 in miniature).
leakage/{train,test}/{BACTERIA,VIRUS}: train holds patients with 2-4 images of one class (file names carry the
  patient), and every one of those films twice: as this script saves it and as a second source would have (85% of
  the size, JPEG quality 70; `<name>_dup.jpg`), as in the merged "Frankenstein" data sets of Roberts et al. 2021.
  A split by image puts a film and its duplicate on both sides; a split by patient keeps them together. Test holds
  other patients (one image each, from cxr-large val). A patient with both a bacterial and a viral file joins one
  class only.
Every image becomes 8-bit grey JPEG (quality 85), longer side 128 px; choices use a fixed seed.
Usage: python scripts/make_lesson_data.py --source DIR/cxr-large [--out cxrdemo/lesson_data]
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import shutil
from pathlib import Path

from make_demo_data import (
    convert,  # the same grey Lanczos JPEG conversion, at this script's size
)

from cxrdemo.data.scan import patient_key
from cxrdemo.population import FILE_NAME as POPULATION_FILE
from cxrdemo.population import KERMANY_CHILDREN, file_text

LONG_SIDE = 128
QUALITY = 85
REPO = Path(__file__).resolve().parent.parent
KIND_RE = re.compile(r"_(bacteria|virus)_", re.IGNORECASE)
CLASSES = {"bacteria": "BACTERIA", "virus": "VIRUS"}
# per class: (source split, patients); bacteria_virus takes one image per patient
BV_COUNTS = {"train": ("train", 120), "val": ("train", 30), "test": ("val", 50)}
LEAK_TRAIN_PATIENTS = 30  # per class, 2-4 images each (about 75 films per class, twice: with their duplicates)
DUP_SCALE, DUP_QUALITY = 0.85, 70  # how the "second source" saved its copy of a leakage training film
LEAK_TEST_PATIENTS = 40  # per class, one image each, from cxr-large val
SETS = ("bacteria_virus", "leakage", "virus_normal")


def by_patient(rows: list[dict], split: str) -> dict[str, dict[str, list[dict]]]:
    """class -> patient -> rows of that kind's pneumonia files in `split` (a patient with both kinds is in both)."""
    seen: dict[str, dict[str, list[dict]]] = {}
    for row in rows:
        m = KIND_RE.search(row["file"])
        if row["split"] != split or row["label"] != "PNEUMONIA" or not m:
            continue
        key = patient_key(row["file"])
        if key is None:
            raise SystemExit(f"no patient id in {row['file']}")
        seen.setdefault(key, {}).setdefault(CLASSES[m.group(1).lower()], []).append(row)
    out: dict[str, dict[str, list[dict]]] = {c: {} for c in CLASSES.values()}
    for key, kinds in seen.items():
        for label, files in kinds.items():
            out[label][key] = sorted(files, key=lambda r: r["file"])
    return out


def normal_by_patient(rows: list[dict], split: str) -> dict[str, list[dict]]:
    """patient -> rows of the NORMAL files in `split`."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        if row["split"] == split and row["label"] == "NORMAL":
            key = patient_key(row["file"])
            if key is None:
                raise SystemExit(f"no patient id in {row['file']}")
            out.setdefault(key, []).append(row)
    return {k: sorted(v, key=lambda r: r["file"]) for k, v in out.items()}


def one_per_patient(pools: dict, labels: tuple[str, ...], name: str, tag: str, seed: int) -> list[dict]:
    """Set `name`: BV_COUNTS patients per class and split, one image each; no patient in two splits or classes."""
    chosen, used = [], set()
    for label in labels:  # the rarer class chooses first
        for split, (source, n) in BV_COUNTS.items():
            keys = sorted(k for k in pools[source][label] if k not in used)
            rng = random.Random(f"{seed}:{tag}:{split}:{label}")
            rng.shuffle(keys)
            for key in keys[:n]:
                chosen.append({**rng.choice(pools[source][label][key]), "set": name, "split": split,
                               "label": label, "patient": key})
                used.add(key)
    return chosen


def choose_virus_normal(rows: list[dict], seed: int) -> list[dict]:
    """virus_normal: one image per patient, as bacteria_virus (train/val from cxr-large train, test from its val)."""
    pools = {s: {"VIRUS": by_patient(rows, s)["VIRUS"], "NORMAL": normal_by_patient(rows, s)} for s in ("train", "val")}
    return one_per_patient(pools, ("VIRUS", "NORMAL"), "virus_normal", "vn", seed)


def choose(rows: list[dict], seed: int) -> list[dict]:
    """(set, split, label, row) choices for bacteria_virus and leakage; no patient in two splits or two classes of
    one set."""
    pools = {s: by_patient(rows, s) for s in ("train", "val")}
    chosen = one_per_patient(pools, ("VIRUS", "BACTERIA"), "bacteria_virus", "bv", seed)
    leak_used: set[str] = set()
    for label in ("VIRUS", "BACTERIA"):
        multi = sorted(k for k, v in pools["train"][label].items() if 2 <= len(v) <= 4 and k not in leak_used)
        rng = random.Random(f"{seed}:leak:{label}")
        rng.shuffle(multi)
        for key in multi[:LEAK_TRAIN_PATIENTS]:
            leak_used.add(key)
            chosen += [{**r, "set": "leakage", "split": "train", "label": label, "patient": key}
                       for r in pools["train"][label][key]]
        single = sorted(k for k in pools["val"][label] if k not in leak_used)
        rng.shuffle(single)
        for key in single[:LEAK_TEST_PATIENTS]:
            leak_used.add(key)
            chosen.append({**rng.choice(pools["val"][label][key]), "set": "leakage", "split": "test", "label": label,
                           "patient": key})
    return chosen


def main(argv: list[str] | None = None) -> None:
    """Rebuild the lesson sets, their POPULATION.json and MANIFEST.csv (README.md is written by hand)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, required=True,
                    help="the cxr-large dataset folder the lesson sets are drawn from")
    ap.add_argument("--out", type=Path, default=REPO / "cxrdemo" / "lesson_data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    with open(args.source / "MANIFEST.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    chosen = choose(rows, args.seed) + choose_virus_normal(rows, args.seed)
    for name in SETS:
        shutil.rmtree(args.out / name, ignore_errors=True)
    manifest = []
    for row in sorted(chosen, key=lambda r: (r["set"], r["split"], r["label"], r["file"])):
        rel = f"{row['set']}/{row['split']}/{row['label']}/{Path(row['file']).with_suffix('.jpg').name}"
        copies = [(rel, LONG_SIDE, QUALITY)]
        if row["set"] == "leakage" and row["split"] == "train":  # the same film, as a second source saved it
            copies.append((rel[:-len(".jpg")] + "_dup.jpg", round(LONG_SIDE * DUP_SCALE), DUP_QUALITY))
        for name, side, quality in copies:
            w, h = convert(args.source / row["file"], args.out / name, side, quality)
            manifest.append({"file": name, "set": row["set"], "split": row["split"], "label": row["label"],
                             "patient": row["patient"], "width": w, "height": h, "cxr_large_file": row["file"],
                             "source_repo": row["source_repo"], "source_commit": row["source_commit"],
                             "source_path": row["source_path"], "license": row["license"]})
    for name in SETS:  # whom the films came from
        (args.out / name / POPULATION_FILE).write_text(file_text(KERMANY_CHILDREN), encoding="utf-8")
    with open(args.out / "MANIFEST.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(manifest[0]))
        writer.writeheader()
        writer.writerows(manifest)
    total = sum((args.out / m["file"]).stat().st_size for m in manifest)
    counts: dict[tuple, int] = {}
    for m in manifest:
        counts[(m["set"], m["split"], m["label"])] = counts.get((m["set"], m["split"], m["label"]), 0) + 1
    for k, v in sorted(counts.items()):
        print(*k, v)
    print(f"wrote {len(manifest)} images ({total / 1e6:.2f} MB) to {args.out}")


if __name__ == "__main__":
    main()
