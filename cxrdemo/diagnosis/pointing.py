"""Does the model look where I look? A person's box on the film against a heatmap: the pointing games.

- energy share (the energy-based pointing game, Wang et al. 2020, Score-CAM): the heatmap's sum inside the box
  over its sum on the whole image;
- uniform share: what a map spread evenly would put in the box (the box's share of the pixels), the baseline;
- peak inside (the pointing game, Zhang et al. 2016): whether the heatmap's maximum lies in the box (with ties,
  any pixel at the maximum counts).

A box is given in fractions of the image's width and height, so it means the same on the film as read, on the
screen copy and on the heatmap (the model sees the whole image squashed to a square, never a crop). A pixel is
inside when its centre is. Data only: views/viewer words it; the worklist's table and exports (views/worklist) and
the report (views/report) take the same `Mark`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

EPS = 1e-12  # below this a map's energy counts as nothing (a flat map scores no share)


@dataclass(frozen=True)
class Box:
    """A rectangle on the image in fractions of its width (x, left to right) and height (y, top to bottom)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def from_corners(cls, xa: float, ya: float, xb: float, yb: float) -> Box | None:
        """The box between two corners in any order, clipped to the image; None when nothing of it is on the image."""
        vals = (xa, ya, xb, yb)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
            return None
        x0, x1 = sorted((min(max(float(xa), 0.0), 1.0), min(max(float(xb), 0.0), 1.0)))
        y0, y1 = sorted((min(max(float(ya), 0.0), 1.0), min(max(float(yb), 0.0), 1.0)))
        return None if x1 <= x0 or y1 <= y0 else cls(x0, y0, x1, y1)

    @classmethod
    def from_pixels(cls, xs: Iterable[float], ys: Iterable[float], width: float, height: float) -> Box | None:
        """The box spanned by pixel coordinates on an image `width` x `height` (a plotly selection's x and y)."""
        xs, ys = list(xs), list(ys)
        if len(xs) < 2 or len(ys) < 2 or width <= 0 or height <= 0:
            return None
        return cls.from_corners(min(xs) / width, min(ys) / height, max(xs) / width, max(ys) / height)

    @property
    def corners(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1): left, top, right, bottom as fractions of the width and height."""
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def area(self) -> float:
        """The box's share of the image's area."""
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    def mask(self, height: int, width: int) -> np.ndarray:
        """HxW booleans: the pixels whose centres lie in the box."""
        cx = (np.arange(width) + 0.5) / width
        cy = (np.arange(height) + 0.5) / height
        return ((cy >= self.y0) & (cy <= self.y1))[:, None] & ((cx >= self.x0) & (cx <= self.x1))[None, :]

    def in_pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in whole pixels of an image `width` x `height` (the original film's, say)."""
        return (round(self.x0 * width), round(self.y0 * height), round(self.x1 * width), round(self.y1 * height))


@dataclass(frozen=True)
class PointingScore:
    """One heatmap against one box."""

    method: str
    energy_share: float | None  # the heatmap's share inside the box; None when the map is empty
    uniform_share: float  # what an evenly spread map would put there
    peak_inside: bool | None  # the maximum in the box; None when the map is empty
    peak: tuple[float, float] | None  # the first maximal pixel's centre, fractions (x, y); None when empty

    @property
    def lift(self) -> float | None:
        """energy_share / uniform_share: 1 = no better than a map spread evenly."""
        if self.energy_share is None or self.uniform_share <= 0:
            return None
        return self.energy_share / self.uniform_share


def score(cam: np.ndarray, box: Box, method: str = "") -> PointingScore:
    """The pointing games of one heatmap (HxW, non-negative) for one box."""
    m = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float64)), 0.0, None)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D heatmap, got shape {m.shape}")
    inside = box.mask(*m.shape)
    uniform = float(inside.mean())
    total = float(m.sum())
    if total <= EPS:
        return PointingScore(method, None, uniform, None, None)
    top = m >= m.max()
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    peak = ((c + 0.5) / m.shape[1], (r + 0.5) / m.shape[0])
    return PointingScore(method, float(m[inside].sum()) / total, uniform, bool((top & inside).any()), peak)


def score_all(cams: Mapping[str, np.ndarray], box: Box) -> list[PointingScore]:
    """One score per method, in the mapping's order."""
    return [score(cam, box, method) for method, cam in cams.items()]


@dataclass(frozen=True)
class Mark:
    """A person's box on one image (named by content hash, never by patient) and the model's scores against it."""

    digest: str  # sha256 of the file's bytes
    name: str  # the file's name
    box: Box
    width: int  # the film's size as read (pixels), to give the box in its pixels too
    height: int
    model: str = ""  # the run whose heatmaps were scored
    target: str = ""  # the class they explain
    scores: tuple[PointingScore, ...] = ()

    @property
    def area(self) -> float:
        """The box's share of the image: what a map spread evenly would put inside it."""
        return self.box.area

    @property
    def energy(self) -> dict[str, float]:
        """Method -> the share of its heatmap in the box (the methods whose map is not empty), in scoring order."""
        return {s.method: s.energy_share for s in self.scores if s.energy_share is not None}

    @property
    def peak_inside(self) -> dict[str, bool]:
        """Method -> whether its map's peak lies in the box (the methods whose map is not empty)."""
        return {s.method: s.peak_inside for s in self.scores if s.peak_inside is not None}

    def rows(self) -> list[dict]:
        """One flat row per scored method (one row without scores when none was made): for CSV and JSON export."""
        left, top, right, bottom = self.box.in_pixels(self.width, self.height)
        base = {"image": self.name, "sha256": self.digest, "x0": round(self.box.x0, 4), "y0": round(self.box.y0, 4),
                "x1": round(self.box.x1, 4), "y1": round(self.box.y1, 4), "left_px": left, "top_px": top,
                "right_px": right, "bottom_px": bottom, "model": self.model, "explains": self.target}
        if not self.scores:
            return [{**base, "method": "", "energy_share": None, "uniform_share": None, "peak_inside": None}]
        return [{**base, "method": s.method,
                 "energy_share": None if s.energy_share is None else round(s.energy_share, 4),
                 "uniform_share": round(s.uniform_share, 4), "peak_inside": s.peak_inside} for s in self.scores]


def mark_rows(marks: Iterable[Mark]) -> list[dict]:
    """Every mark's rows, marks in the given order."""
    return [row for mark in marks for row in mark.rows()]
