"""The decode-once image cache: each file is read and resized once per (files, size), kept in memory and on disk."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrdemo.data.imageio import read_image, resize_to_uint8
from cxrdemo.errors import DatasetError, ImageReadError
from cxrdemo.paths import cache_dir

CACHE_VERSION = 3  # bump when read_image or resize_to_uint8 change what they produce (3: relative paths)


@dataclass
class CachedImages:
    """Decoded, resized images held in memory, with labels in the same order."""

    images: torch.Tensor  # uint8 Nx1xSxS
    labels: torch.Tensor  # int64 N
    paths: list[str]
    skipped: list[tuple[str, str]]  # (path, reason): files that failed to decode, reported not fatal


_MEMO: OrderedDict[str, tuple[torch.Tensor, list[str], list[tuple[str, str]]]] = OrderedDict()
_MEMO_LOCK = threading.Lock()
_MEMO_ENTRIES = 2  # one dataset at one or two sizes; more would hold gigabytes
COPIES = 2  # the decode buffer and, for a moment, a reordered or intensity-adjusted copy of a split
DECODE_RESERVE = 256 * 2**20  # one image being read (at most 2048 x 2048 after shrink-on-read) and its float copies


def available_memory() -> int | None:
    """Bytes this process may still allocate: CXRDEMO_MEMORY_AVAILABLE_MB if set, else /proc/meminfo, else None."""
    override = os.environ.get("CXRDEMO_MEMORY_AVAILABLE_MB", "").strip()
    if override:
        return int(float(override) * 2**20)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None  # not Linux: no estimate, as before


def estimate_memory(n_images: int, size: int, channels: int = 1) -> int:
    """Bytes that loading n images at size x size needs: images x size^2 x channels x COPIES, plus one decode."""
    return n_images * size * size * channels * COPIES + DECODE_RESERVE


def check_memory(n_images: int, size: int) -> None:
    """DatasetError with a sentence when the images cannot fit in the memory available, before any is read."""
    need, have = estimate_memory(n_images, size), available_memory()
    if have is not None and need > have:
        raise DatasetError(f"Loading {n_images:,} images at {size} px needs about {need / 2**30:.1f} GB of memory, "
                           f"but only {have / 2**30:.1f} GB is free: use fewer images per split or a smaller "
                           "image size.")


def _cache_key(paths: list[str], size: int) -> str:
    stamp = []
    for p in paths:
        try:
            st = os.stat(p)
            stamp.append((p, st.st_size, st.st_mtime_ns))
        except OSError:
            stamp.append((p, -1, -1))
    blob = json.dumps([CACHE_VERSION, size, stamp], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _common_folder(paths: list[str]) -> str:
    """The deepest folder holding every file: cache files name images relative to it, never by absolute path."""
    return os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""


def _load_cache_file(path: Path, size: int, base: str) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]] | None:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        images = obj["images"]
        paths = [os.path.join(base, p) for p in obj["paths"]]
        skipped = [(os.path.join(base, p), r) for p, r in obj["skipped"]]
        ok = (obj["version"] == CACHE_VERSION and images.dtype == torch.uint8 and images.ndim == 4
              and tuple(images.shape[1:]) == (1, size, size) and images.shape[0] == len(paths))
        return (images, paths, skipped) if ok else None
    except Exception:  # noqa: BLE001 - any unreadable cache file is simply rebuilt
        return None


def _save_cache_file(path: Path, entry: tuple[torch.Tensor, list[str], list[tuple[str, str]]], base: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Relative names only: a folder above the dataset (a user's home, a patient's name) never reaches the cache.
        torch.save({"version": CACHE_VERSION, "images": entry[0], "paths": [os.path.relpath(p, base) for p in entry[1]],
                    "skipped": [[os.path.relpath(p, base), r] for p, r in entry[2]]}, tmp)
        os.replace(tmp, path)  # readers never see half a file
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only cache folder costs speed, not correctness


def _decode_into(images: torch.Tensor, row: int, path: str, size: int) -> str | None:
    """Read one file into images[row]; the reason it was skipped, or None."""
    try:
        image = resize_to_uint8(read_image(path)[0], size)
        # Inference mode is per thread: a tensor made under the caller's inference mode is written under it here too.
        with torch.inference_mode(images.is_inference()):
            images[row] = image
    except ImageReadError as err:
        return str(err)
    return None


def decode_all(paths: list[str], size: int, workers: int = 1,
               progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
    """Decode and resize every file into one preallocated uint8 tensor; (images, paths read, (path, reason) skipped).

    `workers` threads read in parallel: Pillow's decoders and torch's resize release the GIL, and each
    thread writes its image straight into its row, so memory holds one copy of the split (no list of
    arrays, no concatenation). Skipped rows are closed up in place.
    """
    images = torch.empty((len(paths), 1, size, size), dtype=torch.uint8)
    reasons: list[str | None] = []
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="cxrdemo-decode") as pool:
        for reason in pool.map(_decode_into, [images] * len(paths), range(len(paths)), paths, [size] * len(paths)):
            reasons.append(reason)
            if progress:
                progress(len(reasons), len(paths))
    keep = [i for i, r in enumerate(reasons) if r is None]
    for j, i in enumerate(keep):  # front to back: row i >= j is always read before anything overwrites it
        if i != j:
            images[j] = images[i]
    return images[: len(keep)], [paths[i] for i in keep], [(p, r) for p, r in zip(paths, reasons) if r is not None]


def load_images(items: list[tuple[str, int]], size: int, *, use_disk_cache: bool = True,
                progress: Callable[[int, int], None] | None = None, workers: int = 1) -> CachedImages:
    """Decode and resize each file once per (files, size), `workers` at a time: memoised in this process and on disk."""
    paths = sorted({os.path.abspath(p) for p, _ in items})
    key = _cache_key(paths, size)
    with _MEMO_LOCK:
        entry = _MEMO.get(key)
    cache_file = cache_dir() / f"images-{key}-{size}.pt"
    if entry is None:
        check_memory(len(paths), size)  # a sentence now rather than the OOM killer half-way through
    if entry is None and use_disk_cache and cache_file.is_file():
        entry = _load_cache_file(cache_file, size, _common_folder(paths))
    if entry is None:
        entry = decode_all(paths, size, workers, progress)
        if use_disk_cache:
            _save_cache_file(cache_file, entry, _common_folder(paths))
    elif progress:
        progress(len(paths), len(paths))
    with _MEMO_LOCK:
        _MEMO[key] = entry
        _MEMO.move_to_end(key)
        while len(_MEMO) > _MEMO_ENTRIES:
            _MEMO.popitem(last=False)
    images, ok, skipped = entry
    row = {p: i for i, p in enumerate(ok)}
    kept = [(os.path.abspath(p), k) for p, k in items if os.path.abspath(p) in row]
    index = torch.tensor([row[p] for p, _ in kept], dtype=torch.long)
    if len(index) == len(images) and torch.equal(index, torch.arange(len(images))):
        selected = images  # the usual case: no second copy of the split in memory (callers never write to it)
    else:
        selected = images[index]
    return CachedImages(images=selected, labels=torch.tensor([k for _, k in kept], dtype=torch.long),
                        paths=[p for p, _ in kept], skipped=list(skipped))
