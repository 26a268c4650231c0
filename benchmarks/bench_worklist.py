"""Worklist and report timings: `python benchmarks/bench_worklist.py [--films 50] [--report 24] [--large 2000]`.

Cases, each in a fresh subprocess (the shipped demo model, its load not timed):
- worklist: N films (the 20 built-in test films cycled, as uploaded bytes with distinct names) through
  diagnosis/worklist.assess_films: seconds until every verdict is in, and the peak resident memory above idle
  (after imports and the model's load; the peak is reset there through /proc/self/clear_refs). Targets: 30 s
  and 500 MB for 50 films on 2 cores.
- worklist-large: the same with the films enlarged to --large px on the long side (JPEG): decoding dominates,
  and memory shows that only the shrunk copies are kept.
- report: M films -> the PDF (views/report.build + report_pdf.write) without faithfulness, then with it
  (`--faithfulness`: ROAD against 5 random maps per film). Target: 24 films under 90 s on 2 cores.
The CPU, the cores, torch's threads and the load average (before and after) are printed with the numbers: on a
shared machine the load says how much of the CPU the figures had.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's word for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _films(n: int, large: int | None) -> list[tuple[str, bytes]]:
    """n uploads: the built-in test films cycled (enlarged to `large` px when given), distinct names."""
    import numpy as np
    from PIL import Image

    from cxrdemo import paths

    base = sorted((paths.PACKAGE_DIR / "demo_data" / "test").glob("*/*"))
    out = []
    for i in range(n):
        f = base[i % len(base)]
        raw = f.read_bytes()
        if large:
            img = Image.open(f).convert("L")
            scale = large / max(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.int16) + (i // len(base))  # a different file on each cycle
            buf = io.BytesIO()
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
            raw = buf.getvalue()
        elif i >= len(base):
            raw = raw + bytes(i // len(base))  # JPEG readers ignore trailing bytes: another digest, same film
        out.append((f"{i:03d}-{f.name}", raw))
    return out


def child(case: str, n: int, large: int | None) -> None:
    """One case in this fresh process; prints a JSON line."""
    os.environ.setdefault("CXRDEMO_RUNS_DIR", tempfile.mkdtemp())
    import torch

    from cxrdemo.diagnosis import predict, worklist
    from cxrdemo.views import heatmaps, report, report_pdf

    model = predict.load_model("demo")
    sources = _films(n, large)
    idle = _rss_mb()
    try:  # reset the peak to the current footprint: loading the model peaks higher than it settles
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    threads = heatmaps.busy_threads(os.environ["CXRDEMO_RUNS_DIR"])  # as the pages choose: 1 while a job runs
    out = {"case": case, "films": n, "torch_threads": torch.get_num_threads(), "worklist_threads": threads,
           "idle_mb": round(idle)}
    start, cpu = time.perf_counter(), time.process_time()
    films = worklist.assess_films(model, sources, threads=threads)
    out["verdicts_s"] = round(time.perf_counter() - start, 2)
    out["verdicts_cpu_s"] = round(time.process_time() - cpu, 2)  # both threads' CPU time: what a busy machine hides
    out["peak_above_idle_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - idle)
    out["readable"] = sum(f.readable for f in films)
    if case == "report":
        for faith in (False, True):
            t, cpu = time.perf_counter(), time.process_time()
            pdf = report_pdf.write(report.build(model, films, label="demo", faithfulness=faith, threads=threads))
            key = "with_faithfulness" if faith else "without_faithfulness"
            out[f"report_{key}_s"] = round(time.perf_counter() - t, 2)
            out[f"report_{key}_cpu_s"] = round(time.process_time() - cpu, 2)
            out[f"report_{key}_total_s"] = round(out["verdicts_s"] + out[f"report_{key}_s"], 2)
            out[f"pdf_{key}_mb"] = round(len(pdf) / 2 ** 20, 1)
    print(json.dumps(out))


def run(case: str, n: int, large: int | None) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--films", str(n)]
    argv += ["--large", str(large)] if large else []
    res = subprocess.run(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                         text=True, timeout=1800)
    if res.returncode:
        return {"case": case, "error": (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--films", type=int, default=50, help="films in the worklist case (default 50)")
    ap.add_argument("--report", type=int, default=24, help="films in the report case (default 24; 0: skip)")
    ap.add_argument("--large", type=int, default=2000, help="long side of the enlarged films (0: skip that case)")
    ap.add_argument("--cases", default="worklist,worklist-large,report", help="which cases, comma-separated")
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.films, args.large or None)
    print(f"CPU: {cpu_name()}; {os.cpu_count()} cores visible; load average before: "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    cases = [("worklist", args.films, None)]
    cases += [("worklist-large", args.films, args.large)] if args.large else []
    cases += [("report", args.report, None)] if args.report else []
    for case, n, large in (c for c in cases if c[0] in args.cases.split(",")):
        print(json.dumps(run(case, n, large)), flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("targets: worklist 50 films <= 30 s and <= 500 MB above idle; report 24 films < 90 s (2 cores)")


if __name__ == "__main__":
    main()
