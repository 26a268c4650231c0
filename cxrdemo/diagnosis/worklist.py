"""Several films at once: one ImageResult per file through `result.assess`, the one answer of every surface.

Files are decoded one at a time; each is kept shrunk (a thumbnail and a display copy of at most 1024 px, 8-bit)
and its full-resolution pixels are dropped as soon as the model has read them, so 50 films stay well within a few
hundred MB. A file that cannot be read is an entry with the reader's sentence, never a failure of the list.
Data only: views/worklist words the table, views/report the PDF.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from cxrdemo.data.shrink import DISPLAY_MAX_SIDE, display_copy
from cxrdemo.diagnosis import predict
from cxrdemo.diagnosis.faithfulness import torch_threads
from cxrdemo.diagnosis.predict import LoadedModel
from cxrdemo.diagnosis.result import ImageResult, assess
from cxrdemo.errors import CxrError, ImageReadError

THUMB_SIDE = 96  # px on the long side of a table thumbnail
# Threads: the caller's choice (None: torch's own). The pages pass 1 while a job runs in the store, as Diagnosis does
# (views/heatmaps.busy_threads): on a busy 2-core machine a second thread's spinning cost 4-8x the wall time
# (benchmarks/bench_worklist.py, Intel Xeon Processor, load 6-7); a quiet machine keeps torch's default.
MAX_FILMS = 100  # files read from one worklist: each keeps about 1.3 MB (display copy, CAM-layer output)

Source = tuple[str, "bytes | str | os.PathLike"]  # (the file's name as shown, its bytes or its path)


@dataclass(frozen=True)
class Film:
    """One file of a worklist: its one result and shrunk pixels, or why it could not be read."""

    index: int  # position in the order the files were given
    name: str  # the file's name (no folder)
    digest: str  # sha256 of the file's bytes ("" when the file could not be opened)
    result: ImageResult | None = None
    thumbnail: np.ndarray | None = field(default=None, repr=False)  # uint8 HxW, at most THUMB_SIDE px
    display: np.ndarray | None = field(default=None, repr=False)  # uint8 HxW, at most DISPLAY_MAX_SIDE px
    error: str | None = None  # the reader's sentence when the file is not a readable image

    @property
    def readable(self) -> bool:
        """True when the model read the file."""
        return self.result is not None

    @property
    def needs_look(self) -> bool:
        """True for a film a person should look at first: the model cannot tell ('both') or a check flags it."""
        return self.result is not None and (self.result.doubtful or self.result.flagged)

    def grey(self) -> np.ndarray | None:
        """The display copy as float32 in [0, 1] (for an overlay), or None."""
        return None if self.display is None else self.display.astype(np.float32) / 255.0


Progress = Callable[[int, int, Film], None]  # (films done, films in all, the film just read)


def _to_u8(grey: np.ndarray, max_side: int) -> np.ndarray:
    return np.clip(display_copy(grey, max_side) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _bytes_of(src: bytes | str | os.PathLike) -> bytes:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    try:
        with open(src, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ImageReadError(f"The file could not be opened ({exc.strerror or exc}).") from None


def assess_film(model: LoadedModel, name: str, src: bytes | str | os.PathLike, index: int = 0, *,
                stated_age: float | None = None) -> Film:
    """One file -> its Film: the one result (result.assess), a thumbnail and a display copy; the decoded
    full-resolution image is not kept. An unreadable file gives a Film with the reader's sentence."""
    shown = Path(str(name)).name
    try:
        raw = _bytes_of(src)
    except ImageReadError as exc:
        return Film(index, shown, "", error=str(exc))
    digest = predict.digest(raw)
    try:
        rad = predict.read_radiograph(raw, shown)
    except CxrError as exc:
        return Film(index, shown, digest, error=str(exc))
    return film_of(rad, assess(model, rad, stated_age=stated_age), index)


def film_of(rad: predict.Radiograph, res: ImageResult, index: int = 0) -> Film:
    """A Film of a radiograph already read and its one result (the single-image view's report)."""
    return Film(index, rad.name or res.name, rad.digest, res, _to_u8(rad.grey, THUMB_SIDE),
                _to_u8(rad.grey, DISPLAY_MAX_SIDE))


def iter_films(model: LoadedModel, sources: Iterable[Source], *, stated_age: float | None = None,
               progress: Progress | None = None, known: Mapping[str, Film] | None = None,
               threads: int | None = None) -> Iterator[Film]:
    """Each source's Film in order, as soon as it is read (`progress` is called after each); `known`: films
    already read (by digest) for this model and age, reused instead of read again; `threads`: torch's intra-op
    threads while a film is read (None: as they are)."""
    items = list(sources)[:MAX_FILMS]
    for i, (name, src) in enumerate(items):
        film = None
        if known:
            try:
                d = predict.digest(_bytes_of(src))
            except ImageReadError:
                d = ""
            if d in known:
                film = replace(known[d], index=i, name=Path(str(name)).name)
        if film is None:
            with torch_threads(threads):
                film = assess_film(model, name, src, i, stated_age=stated_age)
        if progress is not None:
            progress(i + 1, len(items), film)
        yield film


def assess_films(model: LoadedModel, sources: Iterable[Source], *, stated_age: float | None = None,
                 progress: Progress | None = None, threads: int | None = None) -> list[Film]:
    """Every source's Film, in the order given (at most MAX_FILMS)."""
    return list(iter_films(model, sources, stated_age=stated_age, progress=progress, threads=threads))


def folder_sources(folder: str | os.PathLike) -> list[Source]:
    """(name, path) of every file under `folder` whose suffix is an image's, sorted by relative path
    (hidden files and folders left out)."""
    from cxrdemo.data import IMAGE_SUFFIXES

    root = Path(folder)
    files = (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(root).parts))
    return [(p.name, p) for p in sorted(files, key=lambda p: p.relative_to(root).as_posix())]


def too_many(n: int) -> int:
    """How many of `n` files a worklist leaves out (beyond MAX_FILMS)."""
    return max(0, n - MAX_FILMS)
