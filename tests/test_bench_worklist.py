"""benchmarks/bench_worklist.py still runs against today's code (it broke once, silently, when a constant it read
was removed): two films through the worklist and a two-film report, each case in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxrdemo import paths

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_the_worklist_benchmark_runs_and_reports_every_case(tmp_path):
    if not (paths.demo_run_dir() / "model.pt").is_file():
        pytest.skip("the benchmark times the shipped demo model (weights/demo), not in this checkout")
    res = subprocess.run([sys.executable, "benchmarks/bench_worklist.py", "--films", "2", "--report", "2",
                          "--large", "300"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "CXRDEMO_RUNS_DIR": str(tmp_path / "runs")})
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [r["case"] for r in rows] == ["worklist", "worklist-large", "report"]
    assert not [r for r in rows if "error" in r], rows
    assert all(r["readable"] == r["films"] == 2 and r["verdicts_s"] > 0 for r in rows)
    assert rows[2]["report_with_faithfulness_s"] > 0 and rows[2]["pdf_without_faithfulness_mb"] > 0
    assert res.stdout.startswith("CPU: ")  # the CPU is named beside every figure
