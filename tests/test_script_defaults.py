"""Scripts and benchmarks default to no path of the machine they were written on: a dataset is an argument (or the
built-in data), never ~/data/... or /work/... baked in, nor a folder found beside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A home, workspace or mount folder written out; /proc and /dev are the operating system's, the same everywhere.
MACHINE_PATH = re.compile(r"^(~|/(work|home|Users|data|mnt|root|srv|opt|scratch|tmp)(/|$))")
# An argument default that climbs out of the repository or into the user's home.
OUTSIDE = re.compile(r"parents\[[2-9]\]|\b(REPO|ROOT)\.parent\b|Path\.home\(|expanduser\(")


def machine_paths(files: list[Path]) -> list[str]:
    """'file:line text' for each string that names a machine's folder and each default that leaves the repo."""
    found = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and MACHINE_PATH.match(node.value):
                found.append(f"{path.name}:{node.lineno} {node.value}")
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                for kw in node.keywords:
                    if kw.arg == "default" and OUTSIDE.search(ast.unparse(kw.value)):
                        found.append(f"{path.name}:{node.lineno} {ast.unparse(kw.value)}")
    return found


def test_scripts_and_benchmarks_hold_no_machine_path():
    files = [*(REPO / "scripts").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]
    assert len(files) > 10
    assert machine_paths(files) == []


def test_the_check_catches_planted_machine_paths(tmp_path):
    script = tmp_path / "planted.py"
    script.write_text('import argparse\nfrom pathlib import Path\nREPO = Path(__file__).parent\n'
                      'SOURCE = Path("/work/shared/data/cxr-dev/test")\n'
                      'ap = argparse.ArgumentParser()\n'
                      'ap.add_argument("--data", default="~/data/chest_xray")\n'
                      'ap.add_argument("--sets", default=str(REPO.parent / "shared" / "data"))\n'
                      'ap.add_argument("--large", default=str(Path(__file__).resolve().parents[2] / "data"))\n'
                      'ap.add_argument("--out", default=str(REPO / "out"))\n'  # inside the repository: fine
                      'STAT = "/proc/self/statm"\n')  # the operating system's: fine
    found = machine_paths([script])
    assert sorted(f.split()[0] for f in found) == ["planted.py:4", "planted.py:6", "planted.py:7", "planted.py:8"], found
