"""Which folders a dataset scan enters: the root a name means, its top folder's layout, hidden and system entries
left out, and a classroom's allow-list (links out of it skipped by their own name, a split linked out refused)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cxrdemo.errors import DatasetError
from cxrdemo.paths import DEMO_DATA_DIR, LESSON_DATA_DIR, LESSON_DATA_PREFIX, allowed_folder, scan_roots, within

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
SYSTEM_FILES = {"thumbs.db", "desktop.ini", "__macosx", "$recycle.bin", "ehthumbs.db"}

# Said of any folder outside a classroom's allow-list: absent, unreadable and disallowed read the same.
OUTSIDE_ROOTS = ("This folder is not inside the folders allowed in classroom mode (CXRDEMO_DATA_ROOTS), or it "
                 "cannot be read. Add its parent folder to CXRDEMO_DATA_ROOTS and restart the app, or choose a "
                 "folder inside them.")
LINKED_OUT = "link to a place outside the allowed folders (not followed)"  # a skipped entry's reason


def is_junk(name: str) -> bool:
    """Whether a folder entry is hidden or a system file (left out of every listing)."""
    return name.startswith((".", "__", "~$")) or name.lower() in SYSTEM_FILES


def find_fence(data: str | Path, roots: Iterable[str | Path] | None) -> tuple[Path, ...] | None:
    """The folders a scan of `data` stays inside (paths.scan_roots: given, else the classroom's from the environment;
    None: anywhere); DatasetError (OUTSIDE_ROOTS) when `data` itself lies outside them, whether it exists or not."""
    fence = scan_roots(data, roots)
    if fence is not None and allowed_folder(os.fspath(data), fence) is None:
        raise DatasetError(OUTSIDE_ROOTS)
    return fence


def check_roots(data: str | Path, roots: Iterable[str | Path] | None = None) -> None:
    """Refuse before a job is made what the scan would refuse for a classroom's allowed folders: the folder, or a
    split folder linked out of them (a look at the top folder only)."""
    fence = find_fence(data, roots)
    if fence is not None:
        read_layout(resolve_data_root(os.fspath(data)), fence, [])


def resolve_data_root(data: str) -> Path:
    """'demo' -> the built-in demo set; otherwise the folder itself, which must exist."""
    if str(data).strip().lower() == "demo":
        return DEMO_DATA_DIR
    if str(data).strip().lower().startswith(LESSON_DATA_PREFIX):
        name = str(data).strip()[len(LESSON_DATA_PREFIX):]
        sets = sorted(p.name for p in LESSON_DATA_DIR.iterdir() if p.is_dir()) if LESSON_DATA_DIR.is_dir() else []
        if name not in sets:
            raise DatasetError(f"There is no built-in lesson set {name!r}; the sets are: {', '.join(sets) or 'none'}.")
        return LESSON_DATA_DIR / name
    path = Path(os.fspath(data)).expanduser()
    if not path.exists():
        raise DatasetError(f"The dataset folder {path} does not exist.")
    if not path.is_dir():
        raise DatasetError(f"{path} is a file, not a folder: choose the folder that holds the class folders "
                           "(or train/val/test).")
    return path.resolve()


def is_fenced(e: os.DirEntry | Path, fence: tuple[Path, ...] | None) -> bool:
    """Whether `e` is a link whose target lies outside the fence (the allowed roots; None: no fence)."""
    if fence is None or not e.is_symlink():
        return False
    return not within(Path(os.path.realpath(e.path if isinstance(e, os.DirEntry) else e)), fence)


def _refuse_linked_split(skipped: list[tuple[str, str]]) -> None:
    """A split folder that links out of the allowed folders: the whole set is refused (a silently missing split
    would change the experiment: a test split gone, or train images carved into val)."""
    for path, reason in skipped:
        name = os.path.basename(path)
        if reason == LINKED_OUT and name.lower() in SPLIT_ALIASES:
            raise DatasetError(f"The {SPLIT_ALIASES[name.lower()]} folder of this dataset is a link to a folder "
                               "outside the ones allowed in classroom mode (CXRDEMO_DATA_ROOTS): it is not read. "
                               "Copy those images into the dataset's own folder, or ask the teacher to allow "
                               "where they are.")


def read_layout(root: Path, fence: tuple[Path, ...] | None, skipped: list
                ) -> tuple[Path, list[Path], list[Path], list[Path]]:
    """(the dataset's root, its folders, its files, its split folders): an archive's one extra folder is stepped
    into; a split folder linked out of the fence is refused."""
    dirs, files = list_folder(root, fence, skipped)
    _refuse_linked_split(skipped)
    split_dirs = [d for d in dirs if d.name.lower() in SPLIT_ALIASES]
    if not split_dirs and not files and len(dirs) == 1:  # an archive that unpacked into one extra folder
        inner_dirs, inner_files = list_folder(dirs[0], fence, skipped)
        _refuse_linked_split(skipped)
        if any(d.name.lower() in SPLIT_ALIASES for d in inner_dirs):
            return dirs[0], inner_dirs, inner_files, [d for d in inner_dirs if d.name.lower() in SPLIT_ALIASES]
    return root, dirs, files, split_dirs


def list_folder(path: Path, fence: tuple[Path, ...] | None = None,
                skipped: list | None = None) -> tuple[list[Path], list[Path]]:
    """Sub-folders and files of a folder (hidden and system entries dropped, links out of the fence skipped by
    their own name), sorted by name."""
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as err:
        raise DatasetError(f"The folder {path} cannot be read ({err.strerror or err}).") from None
    dirs, files = [], []
    for e in entries:
        if is_fenced(e, fence):
            if skipped is not None:
                skipped.append((e.path, LINKED_OUT))
        elif not is_junk(e.name):
            try:
                (dirs if e.is_dir() else files).append(Path(e.path))
            except OSError:
                files.append(Path(e.path))
    return dirs, files
