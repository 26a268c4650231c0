"""Window/level for the screen: what a person SEES of a film, never what the model sees.

The model's input is fixed by the reader (`read_image`: the header's own window or VOI LUT, then a robust
stretch to [0, 1]) and the model's preprocessing record. Windowing needs the values before any window, so the
reader keeps, for a DICOM film it is asked to, a display-only copy of them (`StoredPixels`: after the modality
LUT, at most DISPLAY_MAX_SIDE px, numbers only: never a header field beyond the windows). Any other image is
windowed from its [0, 1] grey, the window then expressed on that scale.

A window maps the values [centre - width/2, centre + width/2] to black..white (DICOM PS3.3 C.11.2.1.2: LINEAR,
LINEAR_EXACT and SIGMOID). The presets for the lungs, the mediastinum and bone are set on the film's own range
(the 0.1 and 99.9 percentiles of its values) in the brightness it is shown with: a radiograph's values have no
fixed scale like CT's Hounsfield units, so the presets of CT (W 1500 L -600...) would mean nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cxrdemo.data.shrink import display_copy

# (centre, width) as fractions of the film's range, in shown brightness (0 = darkest, 1 = brightest).
RELATIVE_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (0.3, 0.5),  # the dark lung fields spread over the whole grey scale
    "mediastinum": (0.65, 0.5),  # the brighter heart, mediastinum and the film's dense parts
    "bone": (0.8, 0.4),  # the brightest values: ribs, clavicles, spine
}
WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass(frozen=True)
class Window:
    """A window in the values' own units (a DICOM film's modality values, else the [0, 1] grey)."""

    centre: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True, eq=False)
class VoiTable:
    """A header's VOI lookup table: values from `first` on map to `table` (output scaled by its own range)."""

    first: int
    table: np.ndarray = field(repr=False)


@dataclass(frozen=True, eq=False)
class StoredPixels:
    """A display-only copy of a film's values before any window, and the header's windows (numbers only)."""

    values: np.ndarray = field(repr=False)  # float32 HxW, at most DISPLAY_MAX_SIDE px on the long side
    lo: float  # the 0.1 percentile of the values
    hi: float  # the 99.9 percentile
    invert: bool = False  # high values are shown dark (MONOCHROME1 or an INVERSE presentation LUT)
    windows: tuple[Window, ...] = ()  # the header's WindowCenter/WindowWidth pairs
    tables: tuple[VoiTable, ...] = ()  # the header's VOI LUT sequence

    @property
    def span(self) -> float:
        """The range of the values (never zero)."""
        return max(self.hi - self.lo, 1e-6)


def from_grey(grey: np.ndarray) -> StoredPixels:
    """A non-DICOM image (or one read without its values): windowed from its [0, 1] grey, 1 = white."""
    return StoredPixels(values=np.asarray(display_copy(grey), dtype=np.float32), lo=0.0, hi=1.0)


def from_values(values: np.ndarray, *, invert: bool = False, windows: tuple[Window, ...] = (),
                tables: tuple[VoiTable, ...] = ()) -> StoredPixels:
    """The display copy of a film's values (after the modality LUT, before any window)."""
    v = np.asarray(display_copy(values), dtype=np.float32)
    finite = np.isfinite(v)
    if not finite.all():
        v = np.where(finite, v, v[finite].min() if finite.any() else 0.0).astype(np.float32)
    step = max(1, int(np.sqrt(v.size / 250_000)))
    lo, hi = (float(x) for x in np.percentile(v[::step, ::step], [0.1, 99.9]))
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
    return StoredPixels(values=v, lo=lo, hi=hi, invert=invert, windows=windows, tables=tables)


def apply_window(px: StoredPixels, window: Window, invert: bool = False) -> np.ndarray:
    """The film as shown through `window`: float32 in [0, 1] (a new array; the values are never changed).
    `invert`: the user's own inversion, on top of the film's photometric one."""
    c, w, v = float(window.centre), max(float(window.width), 1e-6), px.values
    if window.function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (v - c) / w, -60.0, 60.0)))  # clipped: no overflow
    elif window.function == "LINEAR" and w > 1.0:  # DICOM's formula for stored integers: half-value offsets
        out = (v - (c - 0.5)) / (w - 1.0) + 0.5
    else:  # LINEAR_EXACT, and a window narrower than one stored value
        out = (v - c) / w + 0.5
    return _shown(np.clip(out, 0.0, 1.0), px.invert != invert)


def apply_table(px: StoredPixels, index: int, invert: bool = False) -> np.ndarray:
    """The film as shown through the header's VOI LUT number `index`: float32 in [0, 1]."""
    t = px.tables[index]
    idx = np.clip(np.rint(px.values).astype(np.int64) - t.first, 0, len(t.table) - 1)
    lo, hi = float(t.table.min()), float(t.table.max())
    out = (t.table[idx] - lo) / max(hi - lo, 1e-6)
    return _shown(np.clip(out, 0.0, 1.0), px.invert != invert)


def _shown(out: np.ndarray, invert: bool) -> np.ndarray:
    return np.asarray(1.0 - out if invert else out, dtype=np.float32)


def relative_window(px: StoredPixels, centre: float, width: float) -> Window:
    """A window set as fractions of the film's range in shown brightness, in the values' own units."""
    c = px.hi - centre * px.span if px.invert else px.lo + centre * px.span
    return Window(centre=c, width=width * px.span, function="LINEAR_EXACT")


def preset(px: StoredPixels, name: str) -> Window:
    """One of RELATIVE_PRESETS for this film; "full" is its whole range."""
    if name == "full":
        return relative_window(px, 0.5, 1.0)
    return relative_window(px, *RELATIVE_PRESETS[name])


def shown_fractions(px: StoredPixels, window: Window) -> tuple[float, float]:
    """(centre, width) of `window` as fractions of the film's range in shown brightness (for a free slider)."""
    c = (px.hi - window.centre) / px.span if px.invert else (window.centre - px.lo) / px.span
    return c, window.width / px.span
