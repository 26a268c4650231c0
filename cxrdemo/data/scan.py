"""Scan a folder of radiographs and split it: files are listed and sniffed (a few bytes each), never decoded.

Which folders the scan enters (the root, its top layout, a classroom's allow-list and links out of it) is `fence`'s.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from collections.abc import Iterable
from pathlib import Path

from cxrdemo.data.fence import (
    LINKED_OUT,
    SPLIT_ALIASES,
    SYSTEM_FILES,
    find_fence,
    is_fenced,
    is_junk,
    list_folder,
    read_layout,
    resolve_data_root,
)
from cxrdemo.data.sniff import IMAGE_SUFFIXES, sniff
from cxrdemo.errors import ConfigError, DatasetError, ImageReadError
from cxrdemo.paths import DEMO_DATA_DIR
from cxrdemo.population import FILE_NAME as POPULATION_FILE
from cxrdemo.population import Population

SPLITS = ("train", "val", "test")
_MAX_DEPTH = 16  # nested patient/study folders inside a class folder, not a filesystem crawl
_PATIENT_RES = (re.compile(r"^(person\d+)_", re.I), re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.I))


def patient_key(filename: str) -> str | None:
    """The patient a file name encodes in the Kermany set (PERSON123, IM-0123, NORMAL2-IM-0123), else None."""
    for pattern in _PATIENT_RES:
        m = pattern.match(os.path.basename(filename))
        if m:
            return m.group(1).upper()
    return None


@dataclass(frozen=True)
class DatasetScan:
    """A scanned dataset: classes, the files of each split with their class index, and what was skipped."""

    root: str
    classes: tuple[str, ...]
    splits: dict[str, list[tuple[str, int]]]  # train / val / test -> [(absolute path, class index)]
    skipped: list[tuple[str, str]]  # (path, reason)
    auto_split: bool  # True when ROOT/<CLASS>/... was split here, by seed
    notes: list[str] = field(default_factory=list)  # things a user should know (carved val, patient overlap)
    population: Population | None = None  # whom the films came from, from the folder's POPULATION.json

    def counts(self) -> dict[str, dict[str, int]]:
        """Split -> class -> number of images."""
        out = {s: {c: 0 for c in self.classes} for s in self.splits}
        for s, items in self.splits.items():
            for _, k in items:
                out[s][self.classes[k]] += 1
        return out

    @property
    def name(self) -> str:
        """The dataset's name as runs record it: its folder's name ('demo' for the built-in set)."""
        return dataset_name(self.root)

    def skipped_report(self, limit: int | None = None) -> list[tuple[str, str]]:
        """(path relative to the dataset root, reason) of skipped files: all a report needs, nothing above the root."""
        return [(relative_path(p, self.root), r) for p, r in self.skipped[:limit]]

    def summary(self) -> dict:
        """A JSON-ready summary for config.json and the UI (no absolute path: config.data holds the root once)."""
        counts = self.counts()
        totals = {s: sum(c.values()) for s, c in counts.items()}
        imbalance = {s: (round(max(c.values()) / min(c.values()), 3) if c and min(c.values()) else None)
                     for s, c in counts.items()}
        return {"name": self.name, "classes": list(self.classes), "counts": counts,
                "totals": {**totals, "all": sum(totals.values())}, "imbalance": imbalance,
                "n_skipped": len(self.skipped), "skipped": [list(x) for x in self.skipped_report(20)],
                "auto_split": self.auto_split, "notes": list(self.notes),
                **({"population": self.population.to_record()} if self.population else {})}

    def report(self) -> str:
        """A readable text table for the command line."""
        counts, width = self.counts(), max([9, *(len(c) + 2 for c in self.classes)])
        how = "split here by seed" if self.auto_split else "split folders"
        lines = [f"Dataset {self.root} ({how})", "split".ljust(7) + "".join(c.rjust(width) for c in self.classes)
                 + "total".rjust(8) + "imbalance".rjust(11)]
        for s, c in counts.items():
            n, ratio = sum(c.values()), self.summary()["imbalance"][s]
            lines.append(s.ljust(7) + "".join(str(v).rjust(width) for v in c.values()) + str(n).rjust(8)
                         + (f"{ratio:.2f}" if ratio else "-").rjust(11))
        lines += [f"Note: {n}" for n in self.notes]
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} file(s):")
            lines += [f"  {p}: {r}" for p, r in self.skipped_report(20)]
            lines += [f"  ... and {len(self.skipped) - 20} more"] if len(self.skipped) > 20 else []
        return "\n".join(lines)


def dataset_name(data: str | Path) -> str:
    """What runs, model files and pages call a dataset: 'demo', or its folder's name (never the full path)."""
    text = os.fspath(data).strip()
    if text.lower() == "demo" or (text and Path(os.path.realpath(text)) == Path(os.path.realpath(DEMO_DATA_DIR))):
        return "demo"
    return Path(text.rstrip("/\\")).name or text


def relative_path(path: str | Path, root: str | Path) -> str:
    """`path` relative to the dataset root (a skipped-file report's entry); just the file name if it is outside."""
    rel = os.path.relpath(os.fspath(path), os.fspath(root))
    return os.path.basename(os.fspath(path)) if rel.startswith(os.pardir) else rel


def read_population(root: str | Path, fence: tuple[Path, ...] | None = None) -> Population | None:
    """The population a dataset folder states in its POPULATION.json; None without one (or a link out of the
    fence); DatasetError if damaged."""
    path = Path(root) / POPULATION_FILE
    if is_fenced(path, fence) or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return Population.from_record(record)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ConfigError is a ValueError: the fault, worded
        fault = str(exc) if isinstance(exc, ConfigError) else f"it is not readable JSON ({exc.__class__.__name__})"
        raise DatasetError(f"{path} cannot be used: {fault}. Fix it or remove it (then the population is not "
                           "stated).") from None


def _walk_class(folder: Path, visited: set, skipped: list, fence: tuple[Path, ...] | None = None) -> list[str]:
    """Image files under a class folder (any depth), checked by suffix and magic bytes, never decoded."""
    found, stack = [], [(folder, 0)]
    while stack:
        path, depth = stack.pop()
        try:
            st = os.stat(path)
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as err:
            skipped.append((str(path), f"folder cannot be read ({err.strerror or err})"))
            continue
        if (st.st_dev, st.st_ino) in visited:  # a link back to a folder already seen: a loop or a duplicate
            skipped.append((str(path), "folder already scanned (a link loop or duplicate link)"))
            continue
        visited.add((st.st_dev, st.st_ino))
        for e in reversed(entries):
            if is_fenced(e, fence):  # checked before the entry is read or even stat'ed through the link
                skipped.append((e.path, LINKED_OUT))
                continue
            reason = _skip_reason(e, depth)
            if reason == "dir" and e.is_symlink() and not _inside(e.path, folder):
                # A link out of the class folder (e.g. to the split folder) would file other classes' images here.
                skipped.append((e.path, "link to a folder outside its class folder (not followed)"))
            elif reason == "dir":
                stack.append((Path(e.path), depth + 1))
            elif reason:
                skipped.append((e.path, reason))
            else:
                found.append(os.path.abspath(e.path))
    return sorted(found)


def _inside(path: str, folder: Path) -> bool:
    """Whether `path`, links resolved, lies within `folder` (links resolved)."""
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, base]) == base


def _skip_reason(e: os.DirEntry, depth: int) -> str | None:
    if is_junk(e.name):
        return "system file" if e.name.lower() in SYSTEM_FILES else "hidden file"
    try:
        if e.is_dir():
            return "dir" if depth < _MAX_DEPTH else "folder nested too deeply"
        if not e.is_file():
            return "not a regular file (a broken link?)"
    except OSError:
        return "cannot be read"
    suffix = os.path.splitext(e.name)[1].lower()
    if suffix not in IMAGE_SUFFIXES:
        return f"not an image file type ({suffix or 'no extension'})"
    try:
        with open(e.path, "rb") as fp:
            sniff(fp.read(132), suffix)  # 132 bytes reach DICOM's "DICM"; the full sniff is for uploads
    except ImageReadError as err:
        return str(err)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    return None


def _split_by_patient(items: list[tuple[str, int]], fractions: tuple[float, ...], seed: int,
                      by_patient: bool = True) -> list[list]:
    """Stratified split into len(fractions) parts; files of one patient (by name) stay together unless not by_patient."""
    parts: list[list] = [[] for _ in fractions]
    for k in sorted({k for _, k in items}):
        groups: dict[str, list] = {}
        for path, kk in items:
            if kk == k:
                groups.setdefault((patient_key(path) if by_patient else None) or path, []).append((path, kk))
        keys = sorted(groups)
        random.Random(f"{seed}:{k}").shuffle(keys)
        n = sum(len(g) for g in groups.values())
        targets = [round(n * f) for f in fractions]
        # Fill the later parts (val, test) first; the first part (train) takes the rest and keeps at least one group.
        filled = [0] * len(parts)
        for key in keys[:-1]:
            size = len(groups[key])
            # A patient joins a part only if that brings the part closer to its target size.
            i = next((i for i in range(len(parts) - 1, 0, -1)
                      if abs(filled[i] + size - targets[i]) < abs(filled[i] - targets[i])), 0)
            parts[i].extend(groups[key])
            filled[i] += size
        parts[0].extend(groups[keys[-1]])
    return [sorted(p) for p in parts]


def _subset(items: list[tuple[str, int]], n_max: int, seed: int, split: str) -> list[tuple[str, int]]:
    """A stratified random subset of about n_max items (at least one per class present)."""
    if n_max <= 0 or len(items) <= n_max:
        return items
    out = []
    for k in sorted({k for _, k in items}):
        members = [it for it in items if it[1] == k]
        take = min(len(members), max(1, round(n_max * len(members) / len(items))))
        out += random.Random(f"{seed}:{split}:{k}").sample(members, take)
    return sorted(out)


def scan_dataset(data: str | Path, *, seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                 max_per_split: int = 0, require_train: bool = True, by_patient: bool = True,
                 train_share: float = 1.0, roots: Iterable[str | Path] | None = None) -> DatasetScan:
    """List a dataset (ROOT/<split>/<CLASS>/img or ROOT/<CLASS>/img) and split it; reads a few bytes per file.

    by_patient=False splits image by image (a patient's films may land in two splits: the leakage lesson);
    train_share < 1 keeps that stratified share of the training images. `roots` (classroom mode: the allowed
    folders; None: the classroom's from the environment when $CXRDEMO_CLASSROOM is on, else anywhere): a folder
    outside them, or a split folder that is a link out of them, is refused (DatasetError); a class or nested folder
    or a file that is a link out of them is neither followed nor read, and is reported by its own name (inside the
    dataset), never by its target's.
    """
    if len(fractions) != 3 or min(fractions) < 0 or fractions[0] <= 0 or not math.isclose(sum(fractions), 1.0):
        raise ConfigError(f"Split fractions must be three non-negative numbers summing to 1, got {fractions}.")
    fence = find_fence(data, roots)  # every caller's scan: the Trainer, workers, evaluate, calibrate, scorecard, CLI
    skipped: list[tuple[str, str]] = []
    root, dirs, files, split_dirs = read_layout(resolve_data_root(os.fspath(data)), fence, skipped)
    skipped += [(str(f), "not inside a class folder") for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    visited: set = set()
    notes: list[str] = []
    if split_dirs:
        by_split: dict[str, Path] = {}
        for d in split_dirs:
            s = SPLIT_ALIASES[d.name.lower()]
            if s in by_split:
                raise DatasetError(f"{root} has two folders for the {s} split: {by_split[s].name} and {d.name}.")
            by_split[s] = d
        if "train" not in by_split and require_train:
            raise DatasetError(f"{root} has {', '.join(sorted(d.name for d in split_dirs))} folders but no train "
                               "folder.")
        skipped += [(str(d), "folder ignored: not train, val or test") for d in dirs if d not in split_dirs]
        class_dirs = {}
        for s, d in by_split.items():
            sub_dirs, sub_files = list_folder(d, fence, skipped)
            class_dirs[s] = {c.name: c for c in sub_dirs}
            skipped += [(str(f), "not inside a class folder") for f in sub_files if f.suffix.lower() in IMAGE_SUFFIXES]
        names = {s: sorted(c) for s, c in class_dirs.items()}
        if len({tuple(v) for v in names.values()}) > 1:
            detail = "; ".join(f"{by_split[s]} has {', '.join(v) or 'none'}" for s, v in sorted(names.items()))
            raise DatasetError(f"The class folders differ between splits: {detail}. Every split needs the same "
                               "class folders.")
        ref = "train" if "train" in by_split else sorted(by_split)[0]  # an evaluation-only set has no train split
        classes, base = tuple(names[ref]), by_split[ref]
    else:
        class_dirs, classes, base = {"all": {d.name: d for d in dirs}}, tuple(d.name for d in dirs), root
    if not classes:
        raise DatasetError(f"{base} contains no class folders: put the images in one folder per class, "
                           f"e.g. {base / 'NORMAL'} and {base / 'PNEUMONIA'}.")
    if len(classes) == 1:
        raise DatasetError(f"{base} contains only one class folder ({classes[0]}): at least two classes are needed.")
    found = {s: [(p, k) for k, c in enumerate(classes) for p in _walk_class(cd[c], visited, skipped, fence)]
             for s, cd in class_dirs.items()}
    first = found[ref if split_dirs else "all"]
    if not first:
        raise DatasetError(f"{base} contains no readable images in its class folders.")
    for k, c in enumerate(classes):
        if not any(kk == k for _, kk in first):
            raise DatasetError(f"The class folder {class_dirs[ref if split_dirs else 'all'][c]} contains no "
                               "readable images.")
    if split_dirs:
        splits = {s: found.get(s, []) for s in SPLITS}
        if "val" not in found and "train" in found:
            splits["train"], splits["val"] = _split_by_patient(splits["train"], (0.85, 0.15), seed, by_patient)
            notes.append("No val folder: 15% of train (" + ("by patient where file names tell" if by_patient else
                                                            "image by image, patients ignored") + ") was set aside as val.")
        if "test" not in found:
            notes.append("No test folder: the test split is empty.")
        keys = {s: {patient_key(p) for p, _ in v} - {None} for s, v in splits.items()}
        shared = (keys["train"] & (keys["val"] | keys["test"])) | (keys["val"] & keys["test"])
        if shared:
            notes.append(f"{len(shared)} patient(s) (by file name) appear in more than one split: "
                         "test results may be optimistic.")
    else:
        splits = dict(zip(SPLITS, _split_by_patient(first, fractions, seed, by_patient)))
    splits = {s: _subset(v, max_per_split, seed, s) for s, v in splits.items()}
    if train_share < 1 and splits.get("train"):
        splits["train"] = _subset(splits["train"], max(1, round(train_share * len(splits["train"]))), seed, "share")
    return DatasetScan(root=str(root), classes=classes, splits=splits, skipped=skipped,
                       auto_split=not split_dirs, notes=notes, population=read_population(root, fence))
