"""Read one radiograph (PNG, JPEG, BMP, TIFF, GIF or DICOM) into a [0, 1] greyscale array and preprocess it.

Every failure becomes an ImageReadError with a sentence a clinician can act on; nothing else escapes
`read_image`. Decoding happens once per file, so the limits below are checked from headers first.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from cxrdemo.data.decoderwarnings import recorded_warnings
from cxrdemo.data.deflate import inflate_if_deflated
from cxrdemo.data.patient import age_and_sex
from cxrdemo.data.shrink import check_aspect, reduce_array, shrink_factor
from cxrdemo.data import window
from cxrdemo.data.window import StoredPixels, VoiTable, Window
from cxrdemo.data.sniff import HEADER_BYTES, IMAGE_SUFFIXES, sniff  # noqa: F401 - IMAGE_SUFFIXES re-exported
from cxrdemo.errors import ImageReadError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what training writes into the preprocessing record
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_PIXELS = 50_000_000  # decompression-bomb guard: a 7000 x 7000 detector image still fits

# Formats Pillow may use: never EPS/PDF (they run Ghostscript) nor the exotic plugins.
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "TIFF", "GIF", "WEBP", "PPM")  # JPEG covers MPO
_GREY_MODES = ("1", "L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's convert("L")


@dataclass
class ImageMeta:
    """What was read and how; never a patient identifier (no names, IDs, dates, institutions): age and sex only."""

    width: int
    height: int
    format: str  # png | jpeg | dicom | bmp | tiff | gif | webp | ppm
    mode: str  # Pillow mode (L, I;16, RGB...) or DICOM photometric interpretation (MONOCHROME1...)
    bits: int
    frames: int = 1
    notes: list[str] = field(default_factory=list)
    colourfulness: float = 0.0  # Hasler-Suesstrunk M on the 0-255 RGB scale, before conversion to grey
    # DICOM only, upper-case and stripped ("" when absent or not DICOM): what the header says was imaged.
    modality: str = ""  # (0008,0060) CR, DX, CT, MR, US...
    body_part: str = ""  # (0018,0015) BodyPartExamined: CHEST, HAND...
    view: str = ""  # (0018,5101) ViewPosition: PA, AP, LL, RL...
    age_years: float | None = None  # (0010,1010) PatientAge, else from the birth and study dates (data/patient.py)
    sex: str = ""  # (0010,0040) PatientSex: M, F or "" (other or absent)


def read_image(src: str | os.PathLike | bytes, name: str = "") -> tuple[np.ndarray, ImageMeta]:
    """Read a file (or its bytes) into a 2-D float32 greyscale array in [0, 1] and what was read."""
    grey, meta, _ = _read_source(src, name, keep=False)
    return grey, meta


def read_image_for_display(src: str | os.PathLike | bytes,
                           name: str = "") -> tuple[np.ndarray, ImageMeta, StoredPixels]:
    """read_image, and a display-only copy of the values to window on screen: a DICOM film's values before any
    window (numbers only), else its grey. The grey (what the model reads) is the same as read_image's."""
    grey, meta, stored = _read_source(src, name, keep=True)
    return grey, meta, stored if stored is not None else window.from_grey(grey)


def _read_source(src, name: str, keep: bool) -> tuple[np.ndarray, ImageMeta, StoredPixels | None]:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _read(io.BytesIO(bytes(src)), name, keep)
    if not isinstance(src, (str, os.PathLike)):
        raise ImageReadError("Nothing to read: give a file path or the file's bytes.")
    path = Path(os.fspath(src))
    name = name or path.name
    try:
        fp = open(path, "rb")
    except FileNotFoundError:
        raise ImageReadError(f"The file {name} could not be found.") from None
    except IsADirectoryError:
        raise ImageReadError(f"{name} is a folder, not an image file.") from None
    except PermissionError:
        raise ImageReadError(f"The file {name} cannot be opened: permission denied.") from None
    except (OSError, ValueError) as err:
        raise ImageReadError(f"The file {name} cannot be opened ({getattr(err, 'strerror', None) or err}).") from None
    with fp:
        return _read(fp, name, keep)


def _read(fp: BinaryIO, name: str, keep: bool = False) -> tuple[np.ndarray, ImageMeta, StoredPixels | None]:
    header = fp.read(HEADER_BYTES)
    fp.seek(0)
    kind = sniff(header, Path(name).suffix)
    # Decoders warn about damaged files (and Pillow about big ones); record them here so that no
    # third-party warning type reaches the user, and never copy their text: it may quote tag values.
    # Recorded per thread with no lock held while decoding: one slow file must not stall other sessions.
    with recorded_warnings() as caught:
        try:
            stored = None
            if kind == "dicom":
                arr, meta, invert, stored = _read_dicom(fp, keep)
            else:
                arr, meta, invert = _read_pillow(fp)
        except ImageReadError:
            raise
        except Image.DecompressionBombError:
            raise ImageReadError(_too_big_message()) from None
        except MemoryError:
            raise ImageReadError("The image is too large to open on this computer.") from None
        except (OSError, EOFError, SyntaxError, struct.error, IndexError):
            raise ImageReadError("The image is empty or truncated (the file ends early or its data is "
                                 "damaged).") from None
        except (ValueError, TypeError, KeyError, AttributeError, NotImplementedError, RuntimeError,
                OverflowError, ZeroDivisionError, LookupError):
            raise ImageReadError("The image data is damaged or stored in a form this app cannot read.") from None
        except Exception:  # noqa: BLE001 - the decoder boundary: a third-party bug must not crash the app
            raise ImageReadError("The image could not be decoded (the file may be damaged).") from None
    if caught:
        meta.notes.append(f"the decoder reported {len(caught)} problem(s) with this file")
    out = _normalise(arr, meta)
    if invert:
        out = 1.0 - out
    return np.ascontiguousarray(out, dtype=np.float32), meta, stored


def _too_big_message(w: int | None = None, h: int | None = None) -> str:
    dims = f" ({w} x {h} pixels)" if w and h else ""
    return (f"The image is too large to open safely{dims}: the limit is {MAX_PIXELS // 1_000_000} million pixels. "
            "Export a smaller copy.")


def _check_size(w: int, h: int) -> None:
    if w <= 0 or h <= 0:
        raise ImageReadError("The image has no pixels (its width or height is zero).")
    if w * h > MAX_PIXELS:
        raise ImageReadError(_too_big_message(w, h))
    check_aspect(w, h)


def _read_pillow(fp: BinaryIO) -> tuple[np.ndarray, ImageMeta, bool]:
    Image.init()  # registers TIFF and WEBP too: `formats` may only name registered plugins
    im = Image.open(fp, formats=_PIL_FORMATS)  # parses the header only: the size is known before decoding
    fmt = {"MPO": "jpeg", "DIB": "bmp"}.get(im.format or "", (im.format or "unknown").lower())
    _check_size(*im.size)
    notes: list[str] = []
    frames = int(getattr(im, "n_frames", 1)) if getattr(im, "is_animated", False) else 1
    if frames > 1:
        im.seek(0)
        notes.append(f"first of {frames} frames used")
    width, height = im.size
    factor = shrink_factor(width, height)
    if factor > 1 and fmt == "jpeg":
        im.draft(im.mode, (-(-width // factor), -(-height // factor)))  # DCT scaling: decode 1/2, 1/4 or 1/8
    orientation = im.getexif().get(0x0112, 1)  # 0x0112 = EXIF Orientation; 1 is already upright
    im.load()
    mode, colourfulness = im.mode, 0.0
    im = _reduced_before_conversion(im)
    if orientation in range(2, 9):
        im = im.transpose(_EXIF_TURNS[orientation])
        notes.append("EXIF rotation applied")
        if orientation >= 5:  # a quarter turn: the upright image is the header's height wide
            width, height = height, width
    # Reduce right after decoding, in the decoded integer type: no full-size float copy is ever made.
    pixels = np.asarray(im.convert("L") if mode == "1" else im if mode in _GREY_MODES
                        else im.convert("LA") if mode in ("LA", "La") else im.convert("RGBA"))
    del im
    arr = reduce_array(pixels, shrink_factor(pixels.shape[1], pixels.shape[0]))
    del pixels
    if arr.shape[:2] != (height, width):
        notes.append(f"reduced to {arr.shape[1]} x {arr.shape[0]} pixels on reading")
    if mode in ("LA", "La"):
        la = arr.astype(np.float32)
        arr = la[..., 0] * (la[..., 1] / 255.0)
        notes.append("transparency flattened onto black")
    elif mode not in _GREY_MODES:
        if mode == "CMYK":
            notes.append("CMYK converted to grey")
        rgba = arr.astype(np.float32)
        rgb = rgba[..., :3]
        if (rgba[..., 3] < 255).any():
            rgb = rgb * (rgba[..., 3:] / 255.0)
            notes.append("transparency flattened onto black")
        colourfulness = colourfulness_of(rgb)
        arr = rgb @ _LUMA
        if colourfulness > 1.0:
            notes.append("colour image converted to grey")
    bits = {"1": 1, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}.get(mode, 8)
    meta = ImageMeta(width=width, height=height, format=fmt, mode=mode, bits=bits, frames=frames,
                     notes=notes, colourfulness=round(colourfulness, 2))
    return arr, meta, False


_EXIF_TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}  # EXIF Orientation -> the turn that makes the image upright (ImageOps')
_PALETTE_MODES = ("P", "PA")  # indices into a palette: averaged only once they are colours


def _reduced_before_conversion(im: Image.Image) -> Image.Image:
    """A decoded colour, float or 32-bit image box-reduced by Pillow before it is converted or copied to numpy.

    Converting a 7000 x 7000 RGBA, CMYK or LAB image to RGBA and then to an array made two more full-size copies
    (+750 MB); averaging first leaves one decoded image and small ones. 8- and 16-bit grey images keep the reader's
    own reduction after the (zero-copy or small) array view: their pixels are bit-identical to before."""
    factor = shrink_factor(*im.size)
    if factor <= 1 or (im.mode in _GREY_MODES and im.mode not in ("F", "I")):
        return im
    if im.mode in _PALETTE_MODES:
        im = im.convert("RGBA")  # one full-size copy, at most 4 bytes a pixel
    small = im.reduce(factor)  # RGBA and LA are averaged premultiplied (Pillow): transparent pixels weigh nothing
    # A reduced 3-band image (LAB, HSV, YCbCr) carries a zero pad byte that convert("RGBA") would take as alpha.
    return small if small.mode in ("RGBA", "RGBa", "LA", "La", "RGB", "L", "F", "I") else small.convert("RGB")


def _read_dicom(fp: BinaryIO, keep: bool = False) -> tuple[np.ndarray, ImageMeta, bool, StoredPixels | None]:
    import pydicom  # imported here: only DICOM uploads pay for it
    from pydicom import uid
    from pydicom.dataset import FileMetaDataset
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import (
        apply_color_lut,
        apply_modality_lut,
        apply_voi_lut,
        get_decoder,
        pixel_array,
    )

    fp, deflated = inflate_if_deflated(fp)
    try:
        ds = pydicom.dcmread(fp, force=True)
    except InvalidDicomError:
        raise ImageReadError("This file is not a readable DICOM file.") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError("This DICOM file contains no image (no pixel data): it may be a report or "
                             "another non-image object.")
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is None:  # a bare dataset (no file meta): the encoding it was read with is the transfer syntax
        implicit, little = ds.original_encoding
        tsyntax = uid.ImplicitVRLittleEndian if implicit else (
            uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)
        ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = tsyntax
    if tsyntax is not None and tsyntax.is_compressed:
        try:
            available = get_decoder(tsyntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise ImageReadError(f"This DICOM image is compressed with {tsyntax.name}, and no decoder for it "
                                 "is installed on this computer. Export it uncompressed or as PNG (or install "
                                 "pylibjpeg or GDCM).")
    rows, cols = int(ds.Rows), int(ds.Columns)
    _check_size(cols, rows)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    notes = [f"first of {frames} frames used"] if frames > 1 else []
    notes += ["inflated (deflate-compressed file)"] if deflated else []
    arr = pixel_array(ds, index=0)  # decodes the first frame only, whatever the frame count
    colourfulness, invert, stored = 0.0, False, None
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)  # palette indices are looked up before averaging, never averaged
    arr = reduce_array(arr, shrink_factor(cols, rows))  # before the LUTs: they make float64 copies
    if arr.shape[:2] != (rows, cols):
        notes.append(f"reduced to {arr.shape[1]} x {arr.shape[0]} pixels on reading")
    if arr.ndim == 3:
        rgb = arr.astype(np.float32)
        peak = float(2 ** (16 if arr.dtype.itemsize > 1 else 8) - 1)
        colourfulness = colourfulness_of(rgb * (255.0 / peak))
        arr = rgb @ _LUMA
        notes.append("colour image converted to grey")
    else:
        if "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds:
            arr = apply_modality_lut(arr, ds)
            notes.append("rescale slope/intercept applied")
        invert = photometric == "MONOCHROME1"
        if str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE":
            invert = not invert
        if keep:  # the values before any window, for the screen only (the model reads `arr` below)
            stored = window.from_values(arr, invert=invert, windows=_header_windows(ds),
                                        tables=_header_tables(ds, arr, apply_voi_lut))
        if "VOILUTSequence" in ds or "WindowCenter" in ds:
            arr = apply_voi_lut(arr, ds, index=0)
            notes.append("VOI LUT applied" if "VOILUTSequence" in ds else "window centre/width applied")
        if invert:
            notes.append("inverted MONOCHROME1" if photometric == "MONOCHROME1" else "inverted (presentation LUT)")
    age, sex, patient_notes = age_and_sex(ds)
    meta = ImageMeta(width=cols, height=rows, format="dicom", mode=photometric, bits=bits, frames=frames,
                     notes=notes + patient_notes, colourfulness=round(colourfulness, 2),
                     modality=_header_code(ds, "Modality"), body_part=_header_code(ds, "BodyPartExamined"),
                     view=_header_code(ds, "ViewPosition"), age_years=age, sex=sex)
    return arr, meta, invert, stored


def _header_windows(ds) -> tuple[Window, ...]:
    """The header's WindowCenter/WindowWidth pairs (numbers only); a pair that is not a usable window is skipped."""
    def listed(v):
        return [] if v is None else list(v) if hasattr(v, "__iter__") and not isinstance(v, str) else [v]

    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    function = function if function in window.WINDOW_FUNCTIONS else "LINEAR"
    out = []
    for c, w in zip(listed(ds.get("WindowCenter")), listed(ds.get("WindowWidth"))):
        try:
            c, w = float(c), float(w)
        except (TypeError, ValueError):
            continue
        if np.isfinite(c) and np.isfinite(w) and w > 0:
            out.append(Window(centre=c, width=w, function=function))
    return tuple(out[:8])


def _header_tables(ds, values: np.ndarray, apply_voi_lut) -> tuple[VoiTable, ...]:
    """The header's VOI LUTs tabulated over the film's values (pydicom applies each to the range once)."""
    seq = ds.get("VOILUTSequence") or []
    if not len(seq) or values.size == 0:
        return ()
    first, last = int(np.floor(np.nanmin(values))), int(np.ceil(np.nanmax(values)))
    if last - first > 1 << 20:
        return ()
    ramp = np.arange(first, last + 1, dtype=np.int64 if first < 0 else np.uint32)
    tables = []
    for i in range(min(len(seq), 8)):
        try:
            table = np.asarray(apply_voi_lut(ramp, ds, index=i), dtype=np.float32)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            continue
        tables.append(VoiTable(first=first, table=table))
    return tuple(tables)


def _header_code(ds, keyword: str) -> str:
    """A coded DICOM string element, upper-case and stripped; "" when absent or empty."""
    value = ds.get(keyword, "")
    return str(value if isinstance(value, str) or not hasattr(value, "__iter__") else " ".join(map(str, value))
               ).strip().upper()[:32]


def colourfulness_of(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk's colourfulness M of an HxWx3 array on the 0-255 scale (0 = grey, >15 = visibly colour)."""
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 250_000)))  # a subsample is plenty for a statistic
    r, g, b = (rgb[::step, ::step, i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _normalise(arr: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Robust min-max to [0, 1]: the 0.1 and 99.9 percentiles, so a few hot or dead pixels don't set the range."""
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim != 2:
        raise ImageReadError("The image does not have two dimensions.")
    finite = np.isfinite(a)
    if not finite.all():
        if not finite.any():
            raise ImageReadError("The image contains no valid pixel values.")
        a = np.where(finite, a, a[finite].min())
    step = max(1, int(np.sqrt(a.size / 250_000)))
    lo, hi = (float(v) for v in np.percentile(a[::step, ::step], [0.1, 99.9]))
    if hi <= lo:  # mostly one value (e.g. marks on a blank page): fall back to the full range
        lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        meta.notes.append("the image is blank (a single grey value)")
        return np.zeros(a.shape, dtype=np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)


def resize_to_uint8(img: np.ndarray, size: int) -> torch.Tensor:
    """Squash a [0, 1] HxW image to a 1xSxS uint8 tensor (bilinear, antialiased): the one preprocessing step."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    # The whole image, no crop: a crop could cut off the costophrenic angles or the apices.
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (t[0].clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


INTENSITY_MODES = ("none", "equalize")


def adjust_intensity(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-image intensity standardisation of uint8 (B)x1xSxS images, applied after resizing, before any augmentation.

    "equalize" flattens each image's histogram: exposure and processing differ between scanners and
    sites, and equalised images differ less (a step saved with the model, so prediction repeats it).
    """
    if mode == "none":
        return x
    if mode == "equalize":
        from torchvision.transforms.v2 import functional as TF

        return TF.equalize(x)
    raise ValueError(f"unknown intensity mode {mode!r}")


def normalize_batch(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (or [0, 1] float) Bx1xSxS -> float32 Bx3xSxS with grey replicated and per-channel `mean`/`std` applied.

    mean and std come from the model's preprocessing record (training writes IMAGENET_MEAN/STD there).
    """
    if x.ndim == 3:
        x = x.unsqueeze(0)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std
