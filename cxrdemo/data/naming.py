"""How per-image files name an image: its path relative to the dataset root and a short hash of its bytes.

Never an absolute path: a run folder shared with a class must not carry the machine it was made on, and
the same image under another root (a copied dataset) must still match.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

HASH_CHARS = 12  # 48 bits: enough to tell a few hundred thousand images apart, short enough to read


def relative_name(root: str | os.PathLike, path: str | os.PathLike) -> str:
    """`path` relative to `root` with forward slashes; the file name alone when it lies outside `root`."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        return Path(path).name
    return rel.as_posix()


def content_hash(path: str | os.PathLike) -> str:
    """The first HASH_CHARS hex digits of the SHA-256 of the file's bytes ('' when it cannot be read)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return ""
    return h.hexdigest()[:HASH_CHARS]


def image_names(root: str | os.PathLike, paths: list[str]) -> list[tuple[str, str]]:
    """(relative name, content hash) of each path, in order."""
    return [(relative_name(root, p), content_hash(p)) for p in paths]
