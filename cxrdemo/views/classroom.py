"""Classroom mode: what a student may do when the app listens on a network, and what needs the teacher.

The app counts as networked unless it is bound to a loopback address (an unset address listens on every
interface). Then dataset folders are limited to an allow-list, a refused folder says nothing about what exists,
training jobs come from a bounded menu, and folder paths, deleting runs and larger jobs need the teacher's
passphrase. On a desktop bound to localhost nothing changes. The decision itself is runs/policy.py, at the queue;
this module words it and keeps the teacher's unlock (a signed, expiring token). Pages hold no policy.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cxrdemo.config import TrainConfig
from cxrdemo.data.fence import OUTSIDE_ROOTS  # the scan's fence says it too: worded for who can change the allow-list
from cxrdemo.errors import ConfigError, DatasetError
from cxrdemo.paths import (  # noqa: F401 - the allow-list's page-facing names
    DEMO_DATA_DIR,
    FORCE_ENV,
    ROOTS_ENV,
    data_roots,
    is_builtin_data,
)
from cxrdemo.runs import policy
from cxrdemo.runs.policy import (  # noqa: F401 - the page-facing names of the policy
    LOOPBACK_NAMES,
    PASSPHRASE_ENV,
    Limits,
    Refusal,
    Refused,
    browser_tag,
    is_networked,
)

log = logging.getLogger("cxrdemo.classroom")
PASSPHRASE_SECRET = "teacher_passphrase"  # the key in .streamlit/secrets.toml
# One sentence for every folder a student may not read: absent, unreadable and disallowed look the same.
REFUSED = ("This folder cannot be used here. In classroom mode the app reads only the folders the teacher has "
           "allowed (CXRDEMO_DATA_ROOTS); ask the teacher.")
TEACHER_ONLY = "ask the teacher to unlock it with the teacher passphrase (sidebar)."
_BROWSER_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
TOKEN_TTL_S = 8 * 3600  # a school day: the teacher unlocks once
TOKEN_PARAM = "teacher"  # the address parameter holding the signed unlock (never the passphrase)
MAX_TRIES, TRIES_WINDOW_S = 5, 60.0  # wrong passphrases allowed per browser (and address) per minute
_PROCESS_KEY = secrets.token_bytes(32)  # a restart of the server locks every teacher again


def limits_words(limits: Limits) -> str:
    """What a student may start without the teacher, in one caption."""
    return (f":material/school: Classroom mode: up to {limits.max_epochs} epochs, {limits.max_img_size} px images, "
            f"sweeps and lessons of {limits.max_sweep} runs and {limits.max_jobs_per_browser} waiting jobs per "
            "browser; folder paths and larger jobs need the teacher.")


def read_limits(env: Mapping[str, str] | None = None) -> Limits:
    """The classroom limits (policy.read_limits), a wrong environment variable as a ConfigError sentence."""
    try:
        return policy.read_limits(env)
    except Refused as exc:
        raise ConfigError(refusal_words(exc.refusal)) from None


_GROUP = {"sweep": "sweep", "lesson": "lesson"}


def refusal_words(r: Refusal) -> str:
    """The one sentence for a refusal of the classroom policy (policy.Refusal: a code and its numbers)."""
    n, what = r.numbers, _GROUP.get(r.kind, "job")
    if r.code == "folder":
        return OUTSIDE_ROOTS if n.get("teacher") else REFUSED
    if r.code == "bad_limit":
        return f"{n['variable']} must be a whole number of at least 1, not {n['value']!r}."
    if r.code in ("epochs", "img_size"):
        limit = (f"at most {n['limit']} epochs" if r.code == "epochs" else f"images of at most {n['limit']} px")
        has = f"{n['asked']} epochs" if r.code == "epochs" else f"{n['asked']} px"
        if r.kind == "lesson":
            return f"In classroom mode a job may have {limit}; this lesson has a run of {has}: " + TEACHER_ONLY
        return (f"In classroom mode a job may have {limit} (this recipe has {n['asked']}). Choose smaller values, "
                "or " + TEACHER_ONLY)
    if r.code == "group":
        if r.kind == "lesson":
            return (f"This lesson needs {n['asked']} runs; in classroom mode one click may queue at most "
                    f"{n['limit']}: " + TEACHER_ONLY)
        return (f"In classroom mode a sweep may queue at most {n['limit']} runs (this one has {n['asked']}). Choose "
                "fewer backbones or freeze levels, or " + TEACHER_ONLY)
    if r.code == "room":
        if r.kind in _GROUP and n["adding"] > 1:
            return (f"This {what} needs {n['adding']} runs, and this browser may queue {n['left']} more now (in "
                    f"classroom mode each browser may have at most {n['limit']} jobs waiting or training). Let "
                    "some finish or cancel some, or " + TEACHER_ONLY)
        return (f"This browser already has {n['mine']} job(s) waiting or training; in classroom mode each browser "
                f"may have at most {n['limit']}. Let them finish or cancel some, then start again.")
    return f"In classroom mode this {what} needs the teacher: " + TEACHER_ONLY


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


# ---------------------------------------------------------------- the teacher's unlock

def _token_key(passphrase: str) -> bytes:
    # Server secret and passphrase together: a new passphrase (or a restart) voids every unlock.
    return hmac.new(_PROCESS_KEY, passphrase.encode("utf-8"), hashlib.sha256).digest()


def _signature(passphrase: str, expires: int, browser: str) -> str:
    return hmac.new(_token_key(passphrase), f"{expires}:{browser}".encode(), hashlib.sha256).hexdigest()[:32]


def teacher_token(passphrase: str, browser: str, now: float | None = None, ttl_s: float = TOKEN_TTL_S) -> str:
    """A signed, expiring unlock for one browser: 'expiry.signature' (an HMAC; the passphrase is not in it)."""
    expires = int((time.time() if now is None else now) + ttl_s)
    return f"{expires}.{_signature(passphrase, expires, browser)}"


def token_valid(token: str | None, passphrase: str, browser: str, now: float | None = None) -> bool:
    """Whether `token` is an unexpired unlock made for this browser with this passphrase."""
    if not token or not passphrase or "." not in str(token):
        return False
    expires, _, sig = str(token).partition(".")
    if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(sig, _signature(passphrase, int(expires), browser))


class Tries:
    """Wrong passphrases per browser (and network address) in the last minute: at most MAX_TRIES, then a wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fails: dict[str, list[float]] = {}

    def wait_s(self, who: str, now: float | None = None) -> float:
        """Seconds before `who` may try again (0: now)."""
        now = time.time() if now is None else now
        with self._lock:
            recent = [t for t in self._fails.get(who, []) if now - t < TRIES_WINDOW_S]
            self._fails[who] = recent
            return 0.0 if len(recent) < MAX_TRIES else max(0.0, TRIES_WINDOW_S - (now - recent[0]))

    def failed(self, who: str, now: float | None = None) -> None:
        """Record a wrong passphrase from `who` (logged, without what was typed)."""
        with self._lock:
            self._fails.setdefault(who, []).append(time.time() if now is None else now)
        log.warning("wrong teacher passphrase from %s", who)


TRIES = Tries()  # one per server process


def tries_words(wait_s: float) -> str:
    """The sentence for a browser that typed too many wrong passphrases."""
    return (f"Too many wrong passphrases: {MAX_TRIES} tries a minute are allowed. Try again in about "
            f"{max(1, round(wait_s))} s.")


@dataclass(frozen=True)
class Classroom:
    """The policy for one page view: off on a desktop; on a network, student limits unless the teacher unlocked."""

    on: bool = False
    teacher: bool = False
    limits: Limits = field(default_factory=Limits)
    roots: tuple[Path, ...] = ()
    browser: str = ""  # this browser's hashed id (policy.browser_tag)

    @property
    def student(self) -> bool:
        """True when the classroom limits apply to this page view."""
        return self.on and not self.teacher

    def asker(self) -> policy.Asker:
        """Who this page view is to the policy at the queue."""
        return policy.Asker(classroom=self.on, teacher=self.teacher, browser=self.browser, limits=self.limits,
                            roots=self.roots)

    def refusal(self, root: Path, configs: list[TrainConfig], kind: str = "train") -> str | None:
        """The sentence the queue would answer for these jobs now, or None when they may be queued."""
        found = policy.admission(self.asker(), root, configs, kind)
        return refusal_words(found) if found else None

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
        """The folder to scan: as typed on a desktop; in classroom mode resolved and inside the allow-list, or refused."""
        if not self.on or is_builtin_data(path):
            return path
        real = policy.allowed_folder(path, self.roots)
        if real is None:
            raise DatasetError(OUTSIDE_ROOTS if self.teacher else REFUSED)
        return real

    @property
    def shown_roots(self) -> tuple[Path, ...] | None:
        """The roots a page shows the server's folders inside of (views/host_paths); None on a desktop: as they are."""
        return self.roots if self.on else None

    def scan_roots(self, path: str) -> tuple[Path, ...] | None:
        """The folders a dataset scan may follow links into (None: anywhere, on a desktop or for the built-in data)."""
        return self.roots if self.on and not is_builtin_data(path) else None

    def may_delete(self) -> bool:
        """Whether this page view may delete runs."""
        return not self.student


def classroom(address: str | None, passphrase_given: str = "", secret: str | None = None,
              env: Mapping[str, str] | None = None, browser: str = "", unlocked: bool = False) -> Classroom:
    """The policy for a server bound to `address`, for a user who typed `passphrase_given` (may be empty) or whose
    unlock holds (`unlocked`: a valid teacher_token); `browser`: the hashed browser id its jobs record."""
    if not is_networked(address, env):
        return Classroom(browser=browser)
    teacher = unlocked or check_passphrase(passphrase_given, teacher_passphrase(secret, env))
    return Classroom(on=True, teacher=teacher, limits=read_limits(env), roots=data_roots(env), browser=browser)
