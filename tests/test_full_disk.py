"""A real full disk (issue 17): a 4 MB tmpfs mounted in a private mount namespace, not a simulated OSError.

torch.save on a full filesystem raises `RuntimeError: [enforce fail at inline_container.cc:672] . unexpected
pos ...`, which a job used to report as "Training crashed". Needs root and `unshare -m`; skipped otherwise.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_split_dataset

REPO = Path(__file__).resolve().parents[1]

# Runs inside `unshare -m`: the mount lives in this process's own namespace and disappears with it.
SCRIPT = r'''
import json, os, subprocess, sys
from pathlib import Path

mnt, data = Path(sys.argv[1]), sys.argv[2]
r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
if r.returncode:
    print(json.dumps({"mount": r.stderr.strip() or "refused"}))
    sys.exit(0)
import torch
from cxrdemo.config import TrainConfig
from cxrdemo.model import checkpoint
from cxrdemo.runs import store as runs
from cxrdemo.runs import worker

out = {"mount": "ok"}
try:
    checkpoint._torch_save({"w": torch.zeros(2_000_000)}, mnt / "big.pt")  # 8 MB into 4 MB
    out["save"] = "saved"
except OSError as exc:
    out["save"] = [exc.errno, exc.strerror]
except RuntimeError as exc:
    out["save"] = ["RuntimeError", str(exc)]
out["after_save"] = sorted(os.listdir(mnt))
# A real job whose first best-epoch.pt (resnet18: 45 MB) does not fit; its small files do.
config = TrainConfig(data=data, backbone="resnet18", img_size=32, epochs=1, batch_size=8, patience=0, threads=1)
d = runs.create_run(config, mnt / "runs")
result = worker.execute_run(d, runs_dir=mnt / "runs")
out["result"] = {k: result.get(k) for k in ("state", "error")}
out["status"] = {k: runs.read_status(d).get(k) for k in ("state", "error")}
out["run_files"] = sorted(os.listdir(d))
print(json.dumps(out))
'''


def _namespace_problem() -> str | None:
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root"
    if not shutil.which("unshare"):
        return "unshare (util-linux) is not installed"
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True)
    return None if r.returncode == 0 else f"unshare -m is not permitted here ({r.stderr.strip()})"


@pytest.mark.slow
def test_a_real_full_disk_gives_the_disk_full_sentence(tmp_path):
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)
    data = make_split_dataset(tmp_path / "data", (5, 2, 2), 40)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {**os.environ, "CXRDEMO_CACHE_DIR": str(tmp_path / "cache"), "CXRDEMO_WEIGHTS_DIR": str(tmp_path / "w"),
           "CXRDEMO_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", SCRIPT, str(mnt), str(data)],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out["mount"] != "ok":
        pytest.skip(f"mount is not permitted here ({out['mount']})")
    assert out["save"] == [errno.ENOSPC, os.strerror(errno.ENOSPC)]
    assert out["after_save"] == []  # the half-written temporary file is gone
    for record in (out["result"], out["status"]):
        assert record["state"] == "failed"
        assert record["error"] == ("Could not write the run's files (No space left on device): is the disk full or "
                                   "the folder read-only?")
    assert "model.pt" not in out["run_files"] and not [f for f in out["run_files"] if f.endswith(".tmp")]
    assert not any(str(mnt) in line for line in Path("/proc/mounts").read_text().splitlines())  # nothing left mounted
