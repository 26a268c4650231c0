"""docs/ARCHITECTURE.md is true: every module it names exists, and every module under cxrdemo/ is named in it."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ARCHITECTURE.md"
# Modules other branches are adding (issue 27), already named in the doc: the lead empties this set after the merge.
COMING: set[str] = set()
PACKAGES = ("cli", "views", "diagnosis", "runs", "model", "data")
FULL = re.compile(r"\bcxrdemo/[A-Za-z0-9_/]+\.py\b")
# A short reference such as `model/checkpoint.py` or `views/gallery`, outside a full path.
SHORT = re.compile(r"(?<![\w/.-])(" + "|".join(PACKAGES) + r")/([a-z_][a-z0-9_]*)(\.py)?\b(?![/\w])")


def named_modules(text: str) -> set[str]:
    """Every module the text names, as a path from the repository root (short references resolved into cxrdemo/)."""
    full = set(FULL.findall(text))
    short = {f"cxrdemo/{pkg}/{name}.py" for pkg, name, _ in SHORT.findall(FULL.sub("", text))}
    return full | short


def listed_modules(text: str) -> set[str]:
    """The modules of the one-line-per-module list: lines starting '- `cxrdemo/....py`'."""
    return set(re.findall(r"^- `(cxrdemo/[A-Za-z0-9_/]+\.py)`", text, flags=re.MULTILINE))


def package_modules(root: Path) -> set[str]:
    """Every module file of the package, as a path from the repository root."""
    return {p.relative_to(root).as_posix() for p in (root / "cxrdemo").rglob("*.py")
            if "examples" not in p.relative_to(root).parts}


def test_every_module_the_doc_names_exists():
    text = DOC.read_text()
    missing = sorted(m for m in named_modules(text) - COMING if not (REPO / m).is_file())
    assert missing == []


def test_every_module_is_in_the_list():
    text = DOC.read_text()
    modules = package_modules(REPO)
    assert len(modules) > 60
    assert sorted(modules - listed_modules(text)) == []
    assert sorted(listed_modules(text) - modules - COMING) == []  # the list holds nothing else


def test_coming_modules_are_named_until_they_arrive():
    text = DOC.read_text()
    assert COMING <= listed_modules(text)
    arrived = sorted(m for m in COMING if (REPO / m).is_file())
    assert arrived == [], "arrived: take it out of COMING"


def test_the_checks_catch_a_stale_name_and_an_unnamed_module(tmp_path):
    (tmp_path / "cxrdemo" / "model").mkdir(parents=True)
    for name in ("checkpoint.py", "extra.py"):
        (tmp_path / "cxrdemo" / "model" / name).write_text("")
    text = ("- `cxrdemo/model/checkpoint.py` — the model file.\n"
            "Prediction is in `diagnosis/domain.py`; see `views/gallery`, cxrdemo/model/checkpoint.py and "
            "benchmarks/README.md, runs/<id>/model.pt, app_pages/ui.py, `train/val/test`.\n")
    assert named_modules(text) == {"cxrdemo/model/checkpoint.py", "cxrdemo/diagnosis/domain.py",
                                   "cxrdemo/views/gallery.py"}
    assert sorted(package_modules(tmp_path) - listed_modules(text)) == ["cxrdemo/model/extra.py"]
