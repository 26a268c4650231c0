"""Shrink on read: every image is reduced to at most SHRINK_MAX_SIDE pixels on its long side right after decoding.

The networks see at most 299 px, so a 7000 x 7000 detector image carries nothing they can use beyond ~2048 px,
and reducing before any float conversion keeps one diagnosis of a large file within a few hundred MB. Training
and prediction read through the same reader, so they see the same pixels; `shrink_policy()` is the record of it.
"""

from __future__ import annotations

import math

import numpy as np

from cxrdemo.errors import ImageReadError

SHRINK_MAX_SIDE = 2048  # pixels on the long side after reading
SHRINK_METHOD = "box"  # mean of whole-pixel blocks (integer factor); JPEG decodes at 1/2, 1/4 or 1/8 first (DCT scaling)
MAX_ASPECT = 20  # longer side / shorter side: no radiograph is a strip
DISPLAY_MAX_SIDE = 1024  # pixels on the long side of what a page sends to the browser
_BAND_VALUES = 4_000_000  # input values reduced per step: the float32 work stays a few MB, never a full-size copy


def shrink_policy() -> dict:
    """The shrink-on-read policy as a record (for a model's preprocessing): max side, method, max aspect ratio."""
    return {"max_side": SHRINK_MAX_SIDE, "method": SHRINK_METHOD, "max_aspect": MAX_ASPECT}


def shrink_factor(width: int, height: int, max_side: int = SHRINK_MAX_SIDE) -> int:
    """The smallest integer factor that brings the long side to at most `max_side` (1: keep as is)."""
    return max(1, math.ceil(max(width, height) / max_side))


def check_aspect(width: int, height: int) -> None:
    """ImageReadError when one side is more than MAX_ASPECT times the other (a strip, not a radiograph)."""
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageReadError(f"The image is {width} x {height} pixels: one side is more than {MAX_ASPECT} times the "
                             "other, which no radiograph is. Check that this is the right file.")


def reduce_array(arr: np.ndarray, factor: int) -> np.ndarray:
    """HxW or HxWxC reduced by the mean of factor x factor blocks (edge blocks may be smaller), in its own dtype.

    Integers are rounded back to their dtype so that lookup tables applied afterwards (DICOM modality and VOI LUTs)
    still index by integer values; floats come back as float32.
    """
    if factor <= 1:
        return arr
    h, w, rest = arr.shape[0], arr.shape[1], arr.shape[2:]
    hf, wf = h // factor, w // factor
    out = np.empty((-(-h // factor), -(-w // factor), *rest), dtype=np.float32)
    per_row = max(1, w * factor * int(np.prod(rest, dtype=np.int64)))
    step = max(1, _BAND_VALUES // per_row)  # output rows per band
    for r in range(0, hf, step):
        n = min(step, hf - r)
        band = arr[r * factor:(r + n) * factor, :wf * factor]
        out[r:r + n, :wf] = band.reshape(n, factor, wf, factor, *rest).mean(axis=(1, 3), dtype=np.float32)
    if w % factor and hf:  # right edge: blocks narrower than factor
        out[:hf, wf] = arr[:hf * factor, wf * factor:].reshape(hf, factor, w % factor, *rest).mean(
            axis=(1, 2), dtype=np.float32)
    if h % factor:  # bottom edge, then the corner
        bottom = arr[hf * factor:]
        if wf:
            out[hf, :wf] = bottom[:, :wf * factor].reshape(h % factor, wf, factor, *rest).mean(
                axis=(0, 2), dtype=np.float32)
        if w % factor:
            out[hf, wf] = bottom[:, wf * factor:].mean(axis=(0, 1), dtype=np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(arr.dtype)
    return out


def display_copy(img: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """A copy of an image (HxW or HxWxC) for the screen: at most `max_side` pixels on its long side."""
    return reduce_array(img, shrink_factor(img.shape[1], img.shape[0], max_side))
