"""Folders of the server as a classroom shows them: relative to the data root that holds them, or by name only.

A student's screen (and the projector, and a CSV passed around) must not teach the layout of the teacher's
computer: `/home/ana/teaching/chest` is shown as `chest`, a folder below it as `chest/pneumonia-2`, and anything
outside the allowed roots by its last name only. `roots=None` is a desktop: text and paths are left as they are.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

Roots = tuple[Path, ...] | None


def shown_folder(path: str | Path, roots: Roots) -> str:
    """`path` as the page shows it: unchanged on a desktop; else relative to its data root (named), or its name."""
    text = os.fspath(path)
    if roots is None or not text or not os.path.isabs(os.path.expanduser(text)):
        return text  # 'demo', 'lesson:…', a name: nothing of this computer
    real = Path(os.path.realpath(os.path.expanduser(text)))
    for root in roots:
        if real == root or root in real.parents:
            return Path(root.name, real.relative_to(root)).as_posix()
    return Path(text.rstrip("/\\")).name or "a folder"


def host_folder(shown: str, roots: Roots) -> str | None:
    """The folder of the server that `shown` (from shown_folder) names inside the roots; None when none does."""
    if roots is None:
        return shown
    head, _, rest = shown.strip("/").partition("/")
    for root in roots:
        if head == root.name and ".." not in Path(rest).parts:
            return str(root / rest) if rest else str(root)
    return None


def without_host_paths(text: str, folders: Iterable[str], roots: Roots) -> str:
    """`text` (an error, a command) with every `folders` entry, as given and resolved, replaced by shown_folder."""
    if roots is None or not text:
        return text
    for folder in folders:
        folder = os.fspath(folder or "")
        if not os.path.isabs(os.path.expanduser(folder)):
            continue
        shown = shown_folder(folder, roots)
        forms = {folder, folder.rstrip("/"), os.path.realpath(os.path.expanduser(folder))}
        for form in sorted(forms, key=len, reverse=True):  # the longest first: a path holds its parents' text
            text = text.replace(form, shown)
    return text
