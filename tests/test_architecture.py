"""The import rules of docs/ARCHITECTURE.md hold: a layer imports only layers below it (or itself).

Every module under cxrdemo/ is parsed with `ast`; module-level and function-level imports count alike (a
function-level import runs as soon as the function does), in all forms: `import cxrdemo.x.y`,
`from cxrdemo.x import y`, `from cxrdemo import x`, relative imports.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Bottom to top. A module belongs to the longest entry that names it or a package above it. Modules of one layer
# may import each other; diagnosis sits above runs, so prediction may read the run store, and runs may not diagnose.
LAYERS: dict[str, int] = {
    # ground floor: options, error types, locations, atomic writes, population records; the package's __init__
    "cxrdemo": 0, "cxrdemo.config": 0, "cxrdemo.errors": 0, "cxrdemo.paths": 0, "cxrdemo.fileio": 0,
    "cxrdemo.population": 0,  # the population record's value type: options, dataset files and model files share it
    "cxrdemo.data": 1,
    "cxrdemo.model": 2,
    "cxrdemo.runs": 3,
    "cxrdemo.diagnosis": 4,
    "cxrdemo.views": 5,
    "cxrdemo.cli": 6, "cxrdemo.__main__": 6,  # `python -m cxrdemo` is the command line's front door
}
LAYER_NAMES = {0: "the ground floor", 1: "data", 2: "model", 3: "runs", 4: "diagnosis", 5: "views", 6: "cli"}

# Imports that break the rules on purpose, each with its reason: (importing module, imported module) -> why.
ALLOWED: dict[tuple[str, str], str] = {}

# What app_pages/*.py and app.py must never import: they call cxrdemo, which builds models and loops over batches.
PAGE_FORBIDDEN = ("torch", "torchvision", "pytorch_grad_cam")


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file of every module in the package folder (cxrdemo/data/__init__.py is cxrdemo.data)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_names(path: Path, module: str, known: set[str]) -> list[tuple[int, str]]:
    """(line, dotted module) for every import in the file, anywhere in it; `from a import b` names a.b if b is one."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package, one level up per extra dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in known else base))
    return found


def layer_of(module: str) -> int | None:
    """The layer of a cxrdemo module: its longest entry in LAYERS; None when the table does not place it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS and (n > 1 or len(parts) == 1):
            return LAYERS[".".join(parts[:n])]
    return None


def import_violations(package_dir: Path, allowed: dict[tuple[str, str], str] = ALLOWED) -> list[str]:
    """One sentence per import that breaks the rules in the package folder (named cxrdemo); [] when it keeps them."""
    modules = module_names(package_dir)
    problems = []
    for module, path in modules.items():
        here = layer_of(module)
        if here is None:
            problems.append(f"{module} is in no layer: add its package to LAYERS")
            continue
        for line, target in imported_names(path, module, set(modules)):
            where = f"{path.relative_to(package_dir.parent)}:{line}"
            if target.split(".")[0] == "streamlit":
                problems.append(f"{where} imports streamlit: cxrdemo never does, pages do")
            elif target.split(".")[0] == "cxrdemo" and (module, target) not in allowed:
                there = layer_of(target)
                if there is None:
                    problems.append(f"{where} imports {target}, which is in no layer")
                elif there > here:
                    problems.append(f"{where} imports {target}: {LAYER_NAMES[here]} may not import "
                                    f"{LAYER_NAMES[there]}, a higher layer")
    return problems


def page_violations(files: list[Path]) -> list[str]:
    """One sentence per page or app import of a library that builds models or loops over batches."""
    problems = []
    for path in files:
        for line, target in imported_names(path, path.stem, set()):
            if target.split(".")[0] in PAGE_FORBIDDEN:
                problems.append(f"{path.name}:{line} imports {target}: a page calls cxrdemo for that")
    return problems


# ---------------------------------------------------------------- the rules hold

def test_every_module_keeps_the_layer_rules():
    assert len(module_names(REPO / "cxrdemo")) > 40  # the check sees the whole package
    assert import_violations(REPO / "cxrdemo") == []
    # an exception the code no longer needs leaves ALLOWED, so the list stays honest
    raw = import_violations(REPO / "cxrdemo", allowed={})
    stale = [pair for pair in ALLOWED if not any(f" imports {pair[1]}:" in v and v.startswith(pair[0].replace(".", "/"))
                                                 for v in raw)]
    assert stale == []


def test_pages_do_not_import_torch():
    pages = [*(REPO / "app_pages").glob("*.py"), REPO / "app.py"]
    assert len(pages) >= 4
    assert page_violations(pages) == []


# ---------------------------------------------------------------- the check fails on planted violations

def _copy_of_the_package(tmp_path: Path) -> Path:
    copy = tmp_path / "cxrdemo"
    shutil.copytree(REPO / "cxrdemo", copy, ignore=shutil.ignore_patterns("__pycache__", "demo_data"))
    return copy


def test_the_check_catches_planted_violations_in_every_form(tmp_path):
    pkg = _copy_of_the_package(tmp_path)
    with (pkg / "model" / "metrics.py").open("a") as f:  # model importing views, inside a function
        f.write("\n\ndef planted():\n    from cxrdemo.views import words\n    return words\n")
    with (pkg / "data" / "scan.py").open("a") as f:  # data importing runs, `import a.b` at module level
        f.write("\nimport cxrdemo.runs.store\n")
    with (pkg / "runs" / "jobs.py").open("a") as f:  # runs importing diagnosis, `from a.b import c`
        f.write("\nfrom cxrdemo.diagnosis.predict import load_model\n")
    with (pkg / "views" / "text.py").open("a") as f:  # views importing the cli, relative
        f.write("\nfrom ..cli import options\n")
    with (pkg / "config.py").open("a") as f:  # the ground floor importing a layer: `from cxrdemo import x`
        f.write("\nfrom cxrdemo import data\n")
    with (pkg / "diagnosis" / "explain.py").open("a") as f:
        f.write("\nimport streamlit as st\n")
    (pkg / "extras").mkdir()
    (pkg / "extras" / "__init__.py").write_text("")
    found = import_violations(pkg)
    expected = [("cxrdemo/model/metrics.py", "cxrdemo.views.words", "model may not import views"),
                ("cxrdemo/data/scan.py", "cxrdemo.runs.store", "data may not import runs"),
                ("cxrdemo/runs/jobs.py", "cxrdemo.diagnosis.predict", "runs may not import diagnosis"),
                ("cxrdemo/views/text.py", "cxrdemo.cli.options", "views may not import cli"),
                ("cxrdemo/config.py", "cxrdemo.data", "the ground floor may not import data"),
                ("cxrdemo/diagnosis/explain.py", "streamlit", "cxrdemo never does"),
                ("cxrdemo.extras", "", "in no layer")]
    for where, what, why in expected:
        assert any(v.startswith(where) and what in v and why in v for v in found), (where, found)
    assert len(found) == len(expected), found


def test_same_layer_and_downward_imports_pass(tmp_path):
    pkg = _copy_of_the_package(tmp_path)
    with (pkg / "diagnosis" / "quality.py").open("a") as f:  # diagnosis may read the run store: runs is below
        f.write("\nfrom cxrdemo.runs import store\nfrom . import domain\nimport cxrdemo.errors\n")
    assert import_violations(pkg) == []


def test_an_allowed_exception_is_named_and_passes(tmp_path):
    pkg = _copy_of_the_package(tmp_path)
    with (pkg / "model" / "metrics.py").open("a") as f:
        f.write("\nfrom cxrdemo.views import words\n")
    assert import_violations(pkg) != []
    reason = {("cxrdemo.model.metrics", "cxrdemo.views.words"): "planted: a named exception passes"}
    assert import_violations(pkg, allowed={**ALLOWED, **reason}) == []


def test_the_page_check_catches_torch(tmp_path):
    page = tmp_path / "page.py"
    page.write_text("import streamlit as st\nfrom cxrdemo.views import words\n\n\ndef draw():\n"
                    "    import torch.nn.functional as F\n    from torchvision import models\n")
    found = page_violations([page])
    assert len(found) == 2 and "page.py:6 imports torch.nn.functional" in found[0] and "torchvision" in found[1]
