"""Who may queue what: the classroom policy that every job passes on its way into the queue (`jobs.submit_all`).

Data only: a refusal is a code and its numbers; views/classroom words it. On a desktop (bound to loopback) the
asker is `DESKTOP` and nothing is limited. On a network a student may queue small recipes from allow-listed
folders, sweeps and lessons of a bounded size, and a bounded number of jobs per browser; the teacher only the
allow-list. The check and the creation of the runs happen under one lock of the store (`gate`), so two tabs
clicking at once cannot both take the last place, and a group (sweep, lesson) is queued whole or not at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cxrdemo import paths
from cxrdemo.paths import allowed_folder, data_roots, forced  # the allow-list lives with the other locations
from cxrdemo.config import TrainConfig
from cxrdemo.errors import RunError
from cxrdemo.runs import lifecycle
from cxrdemo.runs import store as runs

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
PASSPHRASE_ENV = "CXRDEMO_TEACHER_PASSPHRASE"  # the server's secret: never passed on to a job's process
CLI_BROWSER = "cli"  # what the command line counts its jobs under in classroom mode
GROUP_KINDS = ("sweep", "lesson")  # several runs from one click: bounded in size, queued whole or not at all
KINDS = ("train", "again", "scorecard", *GROUP_KINDS)
_LOCK_FILE = ".queue.lock"


@dataclass(frozen=True)
class Limits:
    """What a student may start without the teacher (each adjustable by an environment variable)."""

    max_epochs: int = 10  # CXRDEMO_CLASS_MAX_EPOCHS
    max_img_size: int = 224  # CXRDEMO_CLASS_MAX_IMG_SIZE
    max_sweep: int = 6  # CXRDEMO_CLASS_MAX_SWEEP: runs in one sweep or lesson
    max_jobs_per_browser: int = 6  # CXRDEMO_CLASS_MAX_JOBS: queued or running jobs of one browser


LIMIT_ENV = {"max_epochs": "CXRDEMO_CLASS_MAX_EPOCHS", "max_img_size": "CXRDEMO_CLASS_MAX_IMG_SIZE",
             "max_sweep": "CXRDEMO_CLASS_MAX_SWEEP", "max_jobs_per_browser": "CXRDEMO_CLASS_MAX_JOBS"}


@dataclass(frozen=True)
class Refusal:
    """Why a job may not be queued: a code (folder, epochs, img_size, group, room, bad_limit) and its numbers."""

    code: str
    numbers: dict = field(default_factory=dict)
    kind: str = "train"


class Refused(RunError):
    """A submission the classroom policy refuses; views/classroom.refusal_words says why in a sentence."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"Refused in classroom mode ({refusal.code}: {refusal.numbers}).")
        self.refusal = refusal


def read_limits(env: Mapping[str, str] | None = None) -> Limits:
    """The classroom limits: the defaults, each replaced by its environment variable (Refused if not a count)."""
    env = os.environ if env is None else env
    values = {}
    for name, var in LIMIT_ENV.items():
        raw = env.get(var, "").strip()
        if raw:
            if not raw.isdigit() or int(raw) < 1:
                raise Refused(Refusal("bad_limit", {"variable": var, "value": raw}))
            values[name] = int(raw)
    return Limits(**values)


def is_networked(address: str | None, env: Mapping[str, str] | None = None) -> bool:
    """Whether the server may be reached from other machines: anything but a loopback address (or forced on)."""
    if forced(env):
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


def browser_tag(browser_id: str) -> str:
    """What a run records of the browser that started it: a hash, so run files never hold a usable id."""
    return hashlib.sha256(browser_id.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Asker:
    """Who is queueing: on a desktop nobody is limited; in a classroom a student unless the teacher unlocked."""

    classroom: bool = False
    teacher: bool = False
    browser: str = ""  # the hashed browser id (browser_tag), recorded with every job it queues
    limits: Limits = field(default_factory=Limits)
    roots: tuple[Path, ...] = ()

    @property
    def student(self) -> bool:
        """True when the classroom limits apply."""
        return self.classroom and not self.teacher


DESKTOP = Asker()


def from_env(env: Mapping[str, str] | None = None, browser: str = "") -> Asker:
    """The asker of a process without a page (the CLI): a student of the classroom when $CXRDEMO_CLASSROOM is on."""
    if not forced(env):
        return Asker(browser=browser)
    return Asker(classroom=True, browser=browser or browser_tag(CLI_BROWSER), limits=read_limits(env),
                 roots=data_roots(env))


# ---------------------------------------------------------------- counting

def active_jobs(root: Path, browser: str | None = None) -> int:
    """Queued or running jobs in the store (runs and side jobs such as scorecards); of one browser when given."""
    n = 0
    for info in runs.list_runs(root):
        if info.damaged:
            continue
        if info.state in lifecycle.ACTIVE and (browser is None or info.meta.get("browser") == browser):
            n += 1
        for side in info.path.glob("*/job.json"):  # side jobs (a scorecard) record their browser in status.json
            try:
                raw = lifecycle.read_status(side.parent)
            except RunError:
                continue
            if raw.get("state") in lifecycle.ACTIVE and (browser is None or raw.get("browser") == browser):
                n += 1
    return n


# ---------------------------------------------------------------- the decision

def recipe_refusal(asker: Asker, config: TrainConfig, kind: str = "train") -> Refusal | None:
    """Why one recipe may not be queued by this asker (its folder, epochs, image size), or None."""
    if asker.classroom and config.data and not paths.is_builtin_data(config.data):
        if allowed_folder(config.data, asker.roots) is None:
            return Refusal("folder", {"teacher": asker.teacher}, kind)  # the allow-list binds the teacher too
    if not asker.student:
        return None
    lim = asker.limits
    if config.epochs > lim.max_epochs:
        return Refusal("epochs", {"asked": config.epochs, "limit": lim.max_epochs}, kind)
    if config.img_size > lim.max_img_size:
        return Refusal("img_size", {"asked": config.img_size, "limit": lim.max_img_size}, kind)
    return None


def room_refusal(asker: Asker, mine: int, adding: int, kind: str = "train") -> Refusal | None:
    """Why `adding` more jobs of this browser, which has `mine` waiting or training, pass its limit; or None."""
    cap = asker.limits.max_jobs_per_browser
    if asker.student and mine + adding > cap:
        return Refusal("room", {"mine": mine, "adding": adding, "limit": cap, "left": max(0, cap - mine)}, kind)
    return None


def admission(asker: Asker, root: Path, configs: list[TrainConfig], kind: str = "train",
              folders: Iterable[str] = (), adding: int | None = None) -> Refusal | None:
    """The one decision: None when this asker may queue these jobs now, else the first refusal.

    `configs`: the recipes of the jobs (none for a scorecard); `folders`: other data folders the jobs read;
    `adding`: how many jobs (default: one per recipe). Pages ask it what to show; `gate` enforces it.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind of job {kind!r}")
    n = len(configs) if adding is None else adding
    if asker.classroom:
        for folder in folders:
            if folder and not paths.is_builtin_data(folder) and allowed_folder(folder, asker.roots) is None:
                return Refusal("folder", {"teacher": asker.teacher}, kind)
    if asker.student and kind in GROUP_KINDS and n > asker.limits.max_sweep:
        return Refusal("group", {"asked": n, "limit": asker.limits.max_sweep}, kind)
    for config in configs:
        refusal = recipe_refusal(asker, config, kind)
        if refusal:
            return refusal
    if asker.student:
        return room_refusal(asker, active_jobs(Path(root), asker.browser), n, kind)
    return None


def room_left(asker: Asker, root: Path) -> int | None:
    """How many more jobs this asker may queue now (None: no classroom limit)."""
    if not asker.student:
        return None
    return max(0, asker.limits.max_jobs_per_browser - active_jobs(Path(root), asker.browser))


@contextlib.contextmanager
def gate(asker: Asker, root: Path, configs: list[TrainConfig], kind: str = "train", folders: Iterable[str] = (),
         adding: int | None = None) -> Iterator[None]:
    """Hold the store's queue lock, refuse (Refused) what `admission` refuses, and let the caller create the jobs.

    Everything created inside counts for the next caller: the decision and the creation are one step.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / _LOCK_FILE, "a+")
    except OSError:  # a read-only or full store: nothing can be queued, and creating the run says so in a sentence
        lock = None
    try:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        refusal = admission(asker, root, configs, kind, folders, adding)
        if refusal:
            raise Refused(refusal)
        yield
    finally:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
