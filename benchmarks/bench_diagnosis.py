"""Diagnosis stages before and after "one image, one answer", side by side: `python benchmarks/bench_diagnosis.py`.

For the shipped demo model and the built-in test films it times the three things the Diagnosis page waits for, as
the page computes them:
  verdict       upload bytes -> the verdict, probabilities, prediction set and checks
  heatmap       the GradCAM map for the verdict
  faithfulness  ROAD of that map against 5 random maps (the page's live setting)
"before" is this project at BEFORE_REV (the commit before the one-result refactor: the page prepared the image
four times, the heatmap ran its own forward pass and its own softmax, each random map ran the whole network, and
ROAD recomputed p before), "after" is this working tree. Each tree runs in its own Python process (so the two
packages never mix), the two alternate round by round (a noisy neighbour slows both alike), and the per-round
ratios before / after are reported with their median. Prints `name: value` lines, the CPU model and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE_REV = "c76fa2e"  # the last commit before issue 27's one-result refactor
STAGES = ("verdict", "heatmap", "faithfulness")

# The child: times the stages with whichever API its tree has. Old tree: predict.prepare + assessment.assess,
# explain.explain (its own forward), faithfulness.measure_explanation (5 full-network random maps, p recomputed).
CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[2]))
from cxrdemo.diagnosis import explain, faithfulness, predict
model = predict.load_model("demo")
films = [Path(p) for p in json.loads(sys.argv[1])]
try:
    from cxrdemo.diagnosis import result
except ImportError:
    result = None
    from cxrdemo.diagnosis import assessment

def stages(raw, name):
    t0 = time.perf_counter()
    rad = predict.read_radiograph(raw, name)
    if result is not None:
        res = result.assess(model, rad)
        t1 = time.perf_counter()
        heat = explain.heatmap(model, res, "GradCAM")
        t2 = time.perf_counter()
        faithfulness.measure(model, res, heat)
    else:
        assessment.assess(model, predict.prepare(model, rad.grey), 0.9, rad.looks_like_cxr)
        t1 = time.perf_counter()
        heat = explain.explain(model, predict.prepare(model, rad.grey), "GradCAM")
        t2 = time.perf_counter()
        faithfulness.measure_explanation(model, predict.prepare(model, rad.grey), heat)
    t3 = time.perf_counter()
    return [t1 - t0, t2 - t1, t3 - t2]

stages(films[0].read_bytes(), films[0].name)  # warm-up: imports, the model, first-call allocations
out = [stages(f.read_bytes(), f.name) for f in films]
print(json.dumps(out))
"""


def cpu_model() -> str:
    """The processor's model name (lscpu), else platform's."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def export(rev: str, into: Path) -> Path:
    """The tracked files of `rev` (git archive) unpacked into `into`."""
    archive = into / "tree.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def run_tree(tree: Path, films: list[str], threads: int) -> list[list[float]]:
    """Per-film stage seconds from one child process importing the cxrdemo of `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree), "CXRDEMO_RUNS_DIR": str(tree / ".bench-runs")}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(films), str(threads)], cwd=tree, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the {tree.name} tree failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print `name: value` lines."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BEFORE_REV, help="the git revision to compare with (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--films", type=int, default=6, help="built-in test films per round (of 20)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    films = sorted(str(p) for p in (ROOT / "cxrdemo" / "demo_data" / "test").glob("*/*"))[: args.films]
    print(f"cpu: {cpu_model()}  cores: {os.cpu_count()}  torch_threads: {args.threads}")
    print(f"loadavg_before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": export(args.before, Path(tmp)), "after": ROOT}
        per_round: dict[str, list[list[list[float]]]] = {"before": [], "after": []}
        for r in range(args.rounds):
            for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                per_round[name].append(run_tree(trees[name], films, args.threads))
    for i, stage in enumerate(STAGES):
        med = {k: statistics.median(t[i] for rnd in v for t in rnd) for k, v in per_round.items()}
        ratios = [statistics.median(t[i] for t in b) / statistics.median(t[i] for t in a)
                  for b, a in zip(per_round["before"], per_round["after"])]
        print(f"{stage}_before_s: {med['before']:.3f}")
        print(f"{stage}_after_s: {med['after']:.3f}")
        print(f"{stage}_speedup: {statistics.median(ratios):.2f}  (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    total = {k: statistics.median(sum(t) for rnd in v for t in rnd) for k, v in per_round.items()}
    print(f"all_three_before_s: {total['before']:.3f}")
    print(f"all_three_after_s: {total['after']:.3f}")
    print(f"loadavg_after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
