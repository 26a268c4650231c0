"""Where runs, weights, caches, the built-in data and a classroom's allowed datasets live (environment variable
first)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEMO_DATA_DIR = PACKAGE_DIR / "demo_data"
LESSON_DATA_DIR = PACKAGE_DIR / "lesson_data"
LESSON_DATA_PREFIX = "lesson:"  # data = "lesson:bacteria_virus" names a built-in lesson set, on any machine
EXAMPLES_DIR = DEMO_DATA_DIR / "test"
DEMO_RUN_NAME = "demo"


def is_builtin_data(data: str) -> bool:
    """Whether `data` names a set shipped with the package ('demo', 'lesson:<name>'), not a folder of this machine."""
    text = str(data).strip().lower()
    return text == "demo" or text.startswith(LESSON_DATA_PREFIX)


ROOTS_ENV = "CXRDEMO_DATA_ROOTS"  # a classroom's allowed dataset folders (os.pathsep-separated)
FORCE_ENV = "CXRDEMO_CLASSROOM"  # "1": classroom mode even on loopback (a proxy; the CLI of a classroom server)


def forced(env: Mapping[str, str] | None = None) -> bool:
    """Whether $CXRDEMO_CLASSROOM switches classroom mode on whatever the address."""
    env = os.environ if env is None else env
    return env.get(FORCE_ENV, "").strip().lower() in ("1", "on", "yes", "true")


def data_roots(env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """The allow-listed dataset folders (links resolved): $CXRDEMO_DATA_ROOTS, else the built-in data only."""
    env = os.environ if env is None else env
    raw = [p.strip() for p in env.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    return (tuple(Path(os.path.realpath(Path(p).expanduser())) for p in raw)
            or (Path(os.path.realpath(DEMO_DATA_DIR)),))


def within(path: Path, roots: Iterable[Path]) -> bool:
    """Whether a resolved path is one of `roots` or inside one."""
    return any(path == r or r in path.parents for r in roots)


def allowed_folder(path: str, roots: Iterable[Path]) -> str | None:
    """The folder resolved (links followed) when it is a readable folder inside the roots; None otherwise."""
    try:
        real = Path(os.path.realpath(Path(path).expanduser()))
        readable = real.is_dir() and os.access(real, os.R_OK | os.X_OK)
    except (OSError, ValueError):  # a name too long, a NUL byte: refused like any other
        return None
    return str(real) if readable and within(real, roots) else None


def scan_roots(data: str | os.PathLike, roots: Iterable[str | os.PathLike] | None = None,
               env: Mapping[str, str] | None = None) -> tuple[Path, ...] | None:
    """The folders a scan of `data` must stay inside: `roots` when given, else the classroom's when $CXRDEMO_CLASSROOM
    is on (the command line, a worker of a classroom server); None (anywhere) on a desktop and for the built-in sets."""
    text = os.fspath(data)
    shipped = (Path(os.path.realpath(DEMO_DATA_DIR)), Path(os.path.realpath(LESSON_DATA_DIR)))
    if is_builtin_data(text) or within(Path(os.path.realpath(Path(text).expanduser())), shipped):
        return None
    if roots is not None:
        return tuple(Path(os.path.realpath(Path(os.fspath(r)).expanduser())) for r in roots)
    return data_roots(env) if forced(env) else None


def runs_dir() -> Path:
    """The run store: $CXRDEMO_RUNS_DIR, else ./runs."""
    return Path(os.environ.get("CXRDEMO_RUNS_DIR") or "runs").expanduser().resolve()


def examples_runs_dir() -> Path:
    """The read-only example runs shipped with the project: $CXRDEMO_EXAMPLES_DIR, else the package's examples/runs."""
    env = os.environ.get("CXRDEMO_EXAMPLES_DIR")
    return Path(env).expanduser().resolve() if env else PACKAGE_DIR / "examples" / "runs"


def weights_dir() -> Path:
    """Local weight files: $CXRDEMO_WEIGHTS_DIR, else the repository's weights/ folder."""
    env = os.environ.get("CXRDEMO_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser().resolve()
    repo_weights = PACKAGE_DIR.parent / "weights"
    return repo_weights if repo_weights.is_dir() else Path("weights").resolve()


def demo_run_dir() -> Path:
    """The shipped demo model, a run folder addressed as `--run demo`."""
    return weights_dir() / DEMO_RUN_NAME


def cache_dir() -> Path:
    """Decoded-image cache: $CXRDEMO_CACHE_DIR, else ~/.cache/cxrdemo."""
    env = os.environ.get("CXRDEMO_CACHE_DIR")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "cxrdemo"
    return base.resolve()
