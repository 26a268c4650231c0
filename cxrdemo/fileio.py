"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxrdemo.errors import RunError


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[io.BufferedWriter]:
    """A temporary file in the same folder that replaces `path` (after fsync) only if the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_OWN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _own_fd(path: Path) -> int | None:
    """An fd appending to `path` when it is a plain file of its own (no link, FIFO, device, second name); else None."""
    try:
        fd = os.open(path, _OWN_FLAGS, 0o644)  # O_NONBLOCK: a FIFO without a reader fails here instead of hanging
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a link; a FIFO with no reader
            return None
        raise
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
        os.set_blocking(fd, True)
        return fd
    os.close(fd)
    return None


def open_append(path: Path, note: bytes = b"") -> io.BufferedWriter:
    """Open a file inside a folder for appending, never through a link: a link, FIFO, device or hard-linked file in
    its place is removed (what it pointed to is left untouched) and a new file starts with `note`."""
    path = Path(path)
    fd = _own_fd(path)
    if fd is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # the name only: a link's target, a FIFO's writer, a hard link's other name keep theirs
        fd = os.open(path, _OWN_FLAGS | os.O_EXCL, 0o644)  # O_EXCL: a link made again meanwhile is not followed
        os.set_blocking(fd, True)
        if note:
            os.write(fd, note)
    return os.fdopen(fd, "ab")


def own_folder(path: Path) -> Path:
    """Make (or keep) a sub-folder, never a link: a link (or a file) in its place is removed first, so what is
    written inside stays inside."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        os.unlink(path)  # the name only: a link's target is left as it is
    path.mkdir(exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then os.replace: readers never see half a file."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str, allow_nan=True) + "\n").encode())


def read_json(path: Path) -> dict:
    """Read a JSON object written by atomic_write_json; RunError if it is missing or damaged."""
    path = Path(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise RunError(f"{path.name} is missing in {path.parent.name}.") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"{path.name} in run {path.parent.name} is damaged ({exc.__class__.__name__}).") from None
    if not isinstance(data, dict):
        raise RunError(f"{path.name} in run {path.parent.name} is damaged (not an object).")
    return data
