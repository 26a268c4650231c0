"""Classroom mode: what a student may do when the app listens on a network, and what needs the teacher.

The app counts as networked unless it is bound to a loopback address (an unset address listens on every
interface). Then dataset folders are limited to an allow-list, a refused folder says nothing about what exists,
training jobs come from a bounded menu, and folder paths, deleting runs and larger jobs need the teacher's
passphrase. On a desktop bound to localhost nothing changes. Pages ask this module; they hold no policy.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cxrdemo.config import TrainConfig
from cxrdemo.errors import ConfigError, DatasetError, RunError
from cxrdemo.paths import DEMO_DATA_DIR
from cxrdemo.runs import store as runs

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
PASSPHRASE_ENV = "CXRDEMO_TEACHER_PASSPHRASE"
PASSPHRASE_SECRET = "teacher_passphrase"  # the key in .streamlit/secrets.toml
ROOTS_ENV = "CXRDEMO_DATA_ROOTS"
FORCE_ENV = "CXRDEMO_CLASSROOM"  # "1": classroom mode even on loopback (an app behind a reverse proxy)
# One sentence for every folder a student may not read: absent, unreadable and disallowed look the same.
REFUSED = ("This folder cannot be used here. In classroom mode the app reads only the folders the teacher has "
           "allowed (CXRDEMO_DATA_ROOTS); ask the teacher.")
TEACHER_ONLY = "ask the teacher to unlock it with the teacher passphrase (sidebar)."
_BROWSER_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")


@dataclass(frozen=True)
class Limits:
    """What a student may start without the teacher (each adjustable by an environment variable)."""

    max_epochs: int = 10  # CXRDEMO_CLASS_MAX_EPOCHS
    max_img_size: int = 224  # CXRDEMO_CLASS_MAX_IMG_SIZE
    max_sweep: int = 6  # CXRDEMO_CLASS_MAX_SWEEP: runs in one sweep
    max_jobs_per_browser: int = 6  # CXRDEMO_CLASS_MAX_JOBS: queued or running jobs of one browser


_LIMIT_ENV = {"max_epochs": "CXRDEMO_CLASS_MAX_EPOCHS", "max_img_size": "CXRDEMO_CLASS_MAX_IMG_SIZE",
              "max_sweep": "CXRDEMO_CLASS_MAX_SWEEP", "max_jobs_per_browser": "CXRDEMO_CLASS_MAX_JOBS"}


def limits_words(limits: Limits) -> str:
    """What a student may start without the teacher, in one caption."""
    return (f":material/school: Classroom mode: up to {limits.max_epochs} epochs, {limits.max_img_size} px images, "
            f"sweeps of {limits.max_sweep} runs and {limits.max_jobs_per_browser} waiting jobs per browser; folder "
            "paths and larger jobs need the teacher.")


def read_limits(env: Mapping[str, str] | None = None) -> Limits:
    """The classroom limits: the defaults, each replaced by its environment variable when set."""
    env = os.environ if env is None else env
    values = {}
    for name, var in _LIMIT_ENV.items():
        raw = env.get(var, "").strip()
        if raw:
            if not raw.isdigit() or int(raw) < 1:
                raise ConfigError(f"{var} must be a whole number of at least 1, not {raw!r}.")
            values[name] = int(raw)
    return Limits(**values)


def is_networked(address: str | None, env: Mapping[str, str] | None = None) -> bool:
    """Whether the server may be reached from other machines: anything but a loopback address (or forced on)."""
    env = os.environ if env is None else env
    if env.get(FORCE_ENV, "").strip().lower() in ("1", "on", "yes", "true"):
        return True
    host = str(address or "").strip().strip("[]").lower()
    if not host:
        return True  # unset: Streamlit listens on every interface
    if host in LOOPBACK_NAMES:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name or 0.0.0.0-like: other machines can reach it


def data_roots(env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """The allow-listed dataset folders (links resolved): $CXRDEMO_DATA_ROOTS, else the built-in data only."""
    env = os.environ if env is None else env
    raw = [p.strip() for p in env.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    return tuple(Path(os.path.realpath(Path(p).expanduser())) for p in raw) or (Path(os.path.realpath(DEMO_DATA_DIR)),)


def _built_in(data: str) -> bool:
    # Sets shipped with the package are named, never typed as folders: 'demo' and 'lesson:<set>' (as
    # paths.is_builtin_data on main); they are always allowed.
    text = str(data).strip().lower()
    return text == "demo" or text.startswith("lesson:")


def _within(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def check_passphrase(given: str, expected: str) -> bool:
    """Whether `given` is the teacher passphrase (constant-time; no passphrase set means no teacher)."""
    if not expected or not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def teacher_passphrase(secret: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The teacher passphrase: $CXRDEMO_TEACHER_PASSPHRASE, else the `teacher_passphrase` secret, else ''."""
    env = os.environ if env is None else env
    return env.get(PASSPHRASE_ENV, "") or (secret or "")


def new_browser_id() -> str:
    """A random id for one browser (kept in the page address, so a reload keeps it)."""
    return secrets.token_urlsafe(16)


def valid_browser_id(value: str | None) -> bool:
    """Whether a browser id from the address looks like one new_browser_id made."""
    return bool(value) and _BROWSER_ID_RE.fullmatch(str(value)) is not None


def browser_tag(browser_id: str) -> str:
    """What a run records of the browser that started it: a hash, so run files never hold a usable id."""
    return hashlib.sha256(browser_id.encode("ascii")).hexdigest()[:16]


@dataclass(frozen=True)
class Classroom:
    """The policy for one page view: off on a desktop; on a network, student limits unless the teacher unlocked."""

    on: bool = False
    teacher: bool = False
    limits: Limits = field(default_factory=Limits)
    roots: tuple[Path, ...] = ()

    @property
    def student(self) -> bool:
        """True when the classroom limits apply to this page view."""
        return self.on and not self.teacher

    def may_type_folders(self) -> bool:
        """Whether the Trainer offers a free folder path box."""
        return not self.student

    def folder_choices(self) -> dict[str, str]:
        """Allow-listed folders a student may pick without typing: path -> the folder's name (no full path shown)."""
        if not self.on:
            return {}
        demo = Path(os.path.realpath(DEMO_DATA_DIR))
        return {str(r): r.name for r in self.roots if r != demo}

    def check_folder(self, path: str) -> str:
        """The folder to scan: as typed on a desktop; in classroom mode resolved and inside the allow-list, or REFUSED."""
        if not self.on or _built_in(path):
            return path
        try:
            real = Path(os.path.realpath(Path(path).expanduser()))
            readable = real.is_dir() and os.access(real, os.R_OK | os.X_OK)
        except (OSError, ValueError):  # a name too long, a NUL byte: refused like any other
            raise DatasetError(REFUSED) from None
        if not _within(real, self.roots) or not readable:
            raise DatasetError(REFUSED)
        return str(real)

    def check_recipe(self, config: TrainConfig) -> None:
        """ConfigError naming every classroom limit a student's recipe exceeds (the data folder for everyone)."""
        if self.on and not _built_in(config.data):
            self.check_folder(config.data)
        if not self.student:
            return
        lim, over = self.limits, []
        if config.epochs > lim.max_epochs:
            over.append(f"at most {lim.max_epochs} epochs (this recipe has {config.epochs})")
        if config.img_size > lim.max_img_size:
            over.append(f"images of at most {lim.max_img_size} px (this recipe has {config.img_size})")
        if over:
            raise ConfigError(f"In classroom mode a job may have {' and '.join(over)}. Choose smaller values, or "
                              + TEACHER_ONLY)

    def check_rerun(self, run_id: str, runs_dir: Path) -> None:
        """'Start again' obeys the same limits as a new job (a student cannot restart the teacher's large run)."""
        if self.on:
            info = runs.load_run(runs.run_dir(run_id, runs_dir))
            if not info.damaged:
                self.check_recipe(TrainConfig.from_dict(info.config))

    def check_sweep(self, n: int) -> None:
        """ConfigError when a student's sweep has more runs than the limit."""
        if self.student and n > self.limits.max_sweep:
            raise ConfigError(f"In classroom mode a sweep may queue at most {self.limits.max_sweep} runs (this one "
                              f"has {n}). Choose fewer backbones or freeze levels, or " + TEACHER_ONLY)

    def check_jobs(self, configs: list[TrainConfig], infos: Iterable, tag: str) -> None:
        """Every check a new job or sweep of `configs` passes before it is queued by browser `tag`."""
        if len(configs) > 1:
            self.check_sweep(len(configs))
        for config in configs:
            self.check_recipe(config)
        self.check_browser_room(infos, tag, len(configs))

    def may_delete(self) -> bool:
        """Whether this page view may delete runs."""
        return not self.student

    def check_browser_room(self, infos: Iterable, tag: str, adding: int = 1) -> None:
        """RunError when this browser's queued and running jobs plus `adding` would pass the per-browser limit."""
        if not self.student:
            return
        mine = sum(1 for i in infos if i.state in ("queued", "running") and i.meta.get("browser") == tag)
        cap = self.limits.max_jobs_per_browser
        if mine + adding > cap:
            raise RunError(f"This browser already has {mine} job(s) waiting or training; in classroom mode each "
                           f"browser may have at most {cap}. Let them finish or cancel some, then start again.")


def classroom(address: str | None, passphrase_given: str = "", secret: str | None = None,
              env: Mapping[str, str] | None = None) -> Classroom:
    """The policy for a server bound to `address`, for a user who typed `passphrase_given` (may be empty)."""
    if not is_networked(address, env):
        return Classroom()
    teacher = check_passphrase(passphrase_given, teacher_passphrase(secret, env))
    return Classroom(on=True, teacher=teacher, limits=read_limits(env), roots=data_roots(env))
