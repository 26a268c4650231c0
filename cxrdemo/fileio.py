"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import io
import json
import os
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
