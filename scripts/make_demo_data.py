"""Build cxrdemo/demo_data from the cxr-dev set: 40+40 train, 10+10 val, 10+10 test, one image per patient.

Each demo split is drawn from the same split of cxr-dev (already split by patient), one image per patient,
patients and images chosen with a fixed seed; images become 8-bit grey JPEG (quality 90), longer side 256 px.
Usage: python scripts/make_demo_data.py --source DIR/cxr-dev [--out cxrdemo/demo_data] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import shutil
from pathlib import Path

from PIL import Image, ImageOps

from cxrdemo.data.scan import patient_key
from cxrdemo.population import FILE_NAME as POPULATION_FILE
from cxrdemo.population import KERMANY_CHILDREN, file_text

COUNTS = {"train": 40, "val": 10, "test": 10}  # per class
CLASSES = ("NORMAL", "PNEUMONIA")
LONG_SIDE = 256
QUALITY = 90
REPO = Path(__file__).resolve().parent.parent


def choose(rows: list[dict], seed: int) -> list[dict]:
    """One image for each of COUNTS[split] patients per class and split; no patient number in two splits."""
    used: set[str] = set()
    chosen = []
    for split, n in COUNTS.items():
        for label in CLASSES:
            by_patient: dict[str, list[dict]] = {}
            for row in rows:
                if row["split"] == split and row["label"] == label:
                    key = patient_key(row["file"])
                    if key is None:
                        raise SystemExit(f"no patient id in {row['file']}")
                    by_patient.setdefault(key, []).append(row)
            # IM-0123 and NORMAL2-IM-0123 may be one child: keep both out of other splits, to be safe.
            keys = sorted(k for k in by_patient if re.sub(r"^NORMAL2-", "", k) not in used)
            rng = random.Random(f"{seed}:{split}:{label}")
            rng.shuffle(keys)
            if len(keys) < n:
                raise SystemExit(f"only {len(keys)} patients for {split}/{label}, need {n}")
            for key in keys[:n]:
                row = rng.choice(sorted(by_patient[key], key=lambda r: r["file"]))
                chosen.append({**row, "patient": key})
                used.add(re.sub(r"^NORMAL2-", "", key))
    return chosen


def convert(src: Path, dst: Path, long_side: int = LONG_SIDE, quality: int = QUALITY) -> tuple[int, int]:
    """Grey, longer side `long_side` (Lanczos), JPEG at `quality`; returns the new size."""
    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("L")
        scale = long_side / max(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, "JPEG", quality=quality, optimize=True)
        return im.size


def main(argv: list[str] | None = None) -> None:
    """Rebuild the demo images, MANIFEST.csv and POPULATION.json (README.md is written by hand)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, required=True, help="the cxr-dev dataset folder the demo set is drawn from")
    ap.add_argument("--out", type=Path, default=REPO / "cxrdemo" / "demo_data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    with open(args.source / "MANIFEST.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    chosen = choose(rows, args.seed)
    for split in COUNTS:
        shutil.rmtree(args.out / split, ignore_errors=True)
    manifest = []
    for row in sorted(chosen, key=lambda r: (list(COUNTS).index(r["split"]), r["label"], r["file"])):
        name = Path(row["file"]).with_suffix(".jpg").name
        rel = f"{row['split']}/{row['label']}/{name}"
        w, h = convert(args.source / row["file"], args.out / rel)
        manifest.append({"split": row["split"], "label": row["label"], "file": rel, "patient": row["patient"],
                         "width": w, "height": h, "cxr_dev_file": row["file"], "source_repo": row["source_repo"],
                         "source_commit": row["source_commit"], "source_path": row["source_path"],
                         "license": row["license"]})
    (args.out / POPULATION_FILE).write_text(file_text(KERMANY_CHILDREN), encoding="utf-8")  # whom they came from
    with open(args.out / "MANIFEST.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(manifest[0]))
        writer.writeheader()
        writer.writerows(manifest)
    total = sum((args.out / m["file"]).stat().st_size for m in manifest)
    print(f"wrote {len(manifest)} images ({total / 1e6:.2f} MB) to {args.out}")


if __name__ == "__main__":
    main()
