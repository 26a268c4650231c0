"""Measure the "unlike the training images" check of the shipped demo model on real and proxy sets.

    python scripts/make_proxy_sets.py --chest-source DATA/cxr-dev/test   # once: benchmarks/out/proxy
    python scripts/measure_domain.py --data-root DATA [--proxy DIR] [--out DIR] [--layers 2 3 5] [--transform sqrt] [--quantile Q]

Fits the domain record on the demo model's own TRAIN split features (cxr-large, the split seed of
weights/demo/config.json), chooses the cut-off on its VAL split only, then reports the share of images
flagged on cxr-dev test, the built-in demo data and every proxy set, for the default variant (domain.default_layers),
the one-description record shipped before issue 28 and the other variants; cxr-shift test, held out, for the
default variant only. Features of every
trunk stage are cached in OUT/features-<model>.npz, so trying another variant does not rerun the network.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrdemo import data, paths
from cxrdemo.model import domain

GEOMETRY = {"cxr-large": "mixed (224 x 224 squashed and aspect kept)", "cxr-dev": "aspect kept (256 px high)",
            "cxr-shift": "squashed to 224 x 224", "demo": "aspect kept", "proxy": "as made (see MANIFEST.csv)"}


def load_demo():
    """The shipped demo model (through the model-file owner) and its training config."""
    from cxrdemo.diagnosis.predict import load_model

    run_config = json.loads((paths.demo_run_dir() / "config.json").read_text())
    model = load_model("demo")
    return model.net, model.preprocessing, run_config


def stage_features(net, images: torch.Tensor, pre) -> np.ndarray:
    """Pooled features of every trunk stage (N x sum of stage widths) of uint8 N x 1 x S x S images prepared by the
    model's record (pre.load)."""
    out = [domain.features(net, pre.normalize(images[i:i + 64]), layers=len(net.trunk)).numpy()
           for i in range(0, len(images), 64)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)  # normalised in batches: 12 bytes a pixel


def image_sets(proxy: Path, run_config: dict, data_root: Path,
               train_data: Path | None = None) -> dict[str, tuple[list[tuple[str, int]], str]]:
    """name -> (items, geometry) for every set measured; training and validation first."""
    cfg = run_config["config"]
    # The shipped model records its training set by name only (no path of the machine it was made on): find it
    # where --data says, else beside the other data sets in --data-root.
    large = train_data or data_root / Path(str(cfg["data"])).name
    scan = data.scan_dataset(large, seed=int(cfg.get("split_seed", 0)))
    sets = {"train": (scan.splits["train"], GEOMETRY["cxr-large"]), "val": (scan.splits["val"], GEOMETRY["cxr-large"])}
    for name in ("cxr-dev", "cxr-shift"):
        s = data.scan_dataset(data_root / name, require_train=False)
        sets[f"{name} test"] = (s.splits["test"], GEOMETRY[name])
    demo = data.scan_dataset(paths.DEMO_DATA_DIR)
    sets["built-in demo (all 120)"] = ([it for sp in ("train", "val", "test") for it in demo.splits[sp]],
                                       GEOMETRY["demo"])
    if proxy.is_dir():
        for folder in sorted(p for p in proxy.iterdir() if p.is_dir()):
            items = [(str(f), 0) for f in sorted(folder.glob("*.png"))]
            sets[f"proxy: {folder.name}"] = (items, GEOMETRY["proxy"])
    return sets


def compute_features(net, pre, sets: dict, cache: Path) -> dict[str, np.ndarray]:
    """Features and labels of every set, from the cache file when it holds the same files."""
    key = {name: [p for p, _ in items] for name, (items, _) in sets.items()}
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if json.loads(str(z["key"])) == key:
            return {k: z[k] for k in z.files if k != "key"}
    out: dict[str, np.ndarray] = {}
    for name, (items, _) in sets.items():
        t = time.time()
        cached = pre.load(items, use_disk_cache=not name.startswith("proxy"))
        if len(cached.paths) != len(items):
            print(f"  {name}: {len(items) - len(cached.paths)} files unreadable, left out")
        out[f"{name}/x"] = stage_features(net, cached.images, pre)
        out[f"{name}/y"] = cached.labels.numpy()
        print(f"  {name}: {len(cached.paths)} images, {time.time() - t:.1f} s", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, key=json.dumps(key), **out)
    return out


def last_stages(x: np.ndarray, widths: list[int], layers: int) -> np.ndarray:
    """The columns of the last `layers` stages of an all-stage feature matrix."""
    return x[:, sum(widths[:-layers]):]


def timing(net, pre, rec: domain.AnyDomainRecord, widths: list[int]) -> dict[str, float]:
    """Milliseconds per image: one forward pass (batch of 1) and one score."""
    x = pre.normalize(pre.adjust(torch.randint(0, 255, (1, 1, pre.img_size, pre.img_size), dtype=torch.uint8)))
    with torch.inference_mode():
        net.eval()
        net(x)
        t = time.perf_counter()
        for _ in range(10):
            net(x)
        fwd = (time.perf_counter() - t) / 10
    f = last_stages(domain.features(net, x, layers=len(net.trunk)).numpy(), widths, rec.layers)
    domain.score_domain(rec, f)
    t = time.perf_counter()
    for _ in range(100):
        domain.score_domain(rec, f)
    return {"forward_ms": 1000 * fwd, "score_ms": 1000 * (time.perf_counter() - t) / 100}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{info.get('Model name', '?').strip()}, {info.get('CPU(s)', '?').strip()} CPU(s)"


HELD_OUT = "cxr-shift"  # scored for the default variant only: never seen while choosing (issue 28)


def variant_list(args, widths: list[int]) -> list[tuple[str, int, str, float]]:
    """(kind, layers, combine, stage quantile): the default first (domain.default_layers), then the record shipped
    before issue 28 (sqrt, penultimate layer), then the others compared: one description of the last k stages, and
    one per stage normalised by its 95% or 99.5% validation quantile, combined by max or sum."""
    out = [("one", domain.default_layers(widths), "", 0.0), ("one", 1, "", 0.0)]
    out += [("one", k, "", 0.0) for k in args.layers if k > 1]
    out += [("stages", k, c, q) for k in args.layers if k > 1 for c in domain.COMBINES for q in (0.95, 0.995)]
    return list(dict.fromkeys(out))


def fit_variant(feats: dict, widths: list[int], variant: tuple[str, int, str, float], args):
    """The record of one variant, fitted on the train features, cut-off on the val features."""
    kind, k, combine, stage_q = variant
    x, v = last_stages(feats["train/x"], widths, k), last_stages(feats["val/x"], widths, k)
    if kind == "one":
        return domain.fit_domain(x, feats["train/y"], v, args.quantile, layers=k, transform=args.transform)
    return domain.fit_stages(x, feats["train/y"], v, widths[-k:], args.quantile, stage_q, combine, args.transform)


def tag_of(variant: tuple[str, int, str, float]) -> str:
    kind, k, combine, stage_q = variant
    return f"one L{k}" if kind == "one" else f"stages L{k} {combine} q{stage_q:g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proxy", default="benchmarks/out/proxy")
    ap.add_argument("--out", default="benchmarks/out/domain")
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 3, 5], help="the other variants' stage counts")
    ap.add_argument("--transform", default="sqrt", choices=domain.TRANSFORMS)
    ap.add_argument("--quantile", type=float, default=domain.DEFAULT_QUANTILE)
    ap.add_argument("--data-root", type=Path, required=True, help="the folder holding cxr-dev and cxr-shift (and, "
                    "unless --data says otherwise, the demo model's training set cxr-large)")
    ap.add_argument("--data", type=Path, default=None,
                    help="the demo model's training set (default: cxr-large in --data-root)")
    args = ap.parse_args(argv)
    net, pre, run_config = load_demo()
    x0 = data.normalize_batch(torch.zeros(1, 1, pre.img_size, pre.img_size, dtype=torch.uint8), pre.mean, pre.std)
    widths = domain.stage_widths(net, x0, len(net.trunk))
    sets = image_sets(Path(args.proxy), run_config, args.data_root, args.data)
    feats = compute_features(net, pre, sets, Path(args.out) / f"features-{net.backbone}.npz")
    rows, records = [], {}
    for variant in variant_list(args, widths):
        default = not records
        rec = fit_variant(feats, widths, variant, args)
        tag = tag_of(variant)
        records[tag] = rec
        print(f"\n{tag}{' (default)' if default else ''}: dim {rec.feature_dim}, cut-off {rec.cutoff:.3f}, "
              f"record {domain.record_bytes(rec) / 1e6:.2f} MB")
        for name, (items, geometry) in sets.items():
            if name.startswith(HELD_OUT) and not default:
                continue  # the held-out set is scored for the default only
            s = domain.score_domain(rec, last_stages(feats[f"{name}/x"], widths, rec.layers))
            r = {"variant": tag, "set": name, "n": len(s), "flagged": int((s > rec.cutoff).sum()),
                 "rate": float((s > rec.cutoff).mean()) if len(s) else float("nan"),
                 "min_over_cutoff": float(s.min() / rec.cutoff), "median_score": float(np.median(s)),
                 "geometry": geometry}
            rows.append(r)
            print(f"  {name:32s} {r['flagged']:4d}/{r['n']:4d} = {100 * r['rate']:5.1f}%  "
                  f"median {r['median_score']:7.2f}  min/cut-off {r['min_over_cutoff']:.2f}")
    out = Path(args.out)
    with open(out / "flag_rates.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    t = timing(net, pre, next(iter(records.values())), widths)
    summary = {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), **t,
               "default": next(iter(records)),
               "records": {k: {"cutoff": r.cutoff, "dim": r.feature_dim, "bytes": domain.record_bytes(r),
                               "n_train": r.n_train, "n_val": r.n_val} for k, r in records.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
