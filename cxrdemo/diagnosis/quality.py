"""Is this plausibly a chest radiograph? A simple, explainable check run before every prediction.

The model answers NORMAL or PNEUMONIA for any picture it is given; this heuristic catches the
obvious mistakes (a colour photo, a pattern or drawing, noise, a blank or tiny image) so that
the app can warn instead of showing a meaningless probability. From the pixels it does NOT detect the
wrong body part, a lateral view or a poor-quality radiograph; for DICOM files the header speaks first
(`check_dicom_header`: another modality, another body part, a lateral view). Each pixel check compares
one image statistic with a threshold set with a wide margin around real radiographs; `score` is the
weakest check's margin mapped to [0, 1] (0.5 = on a threshold; 0 when the header objects).

Measured (tests/test_quality.py and a one-off run over the project's cxr-dev set):
  * real radiographs accepted: 120 / 120 demo images (100%); 499 / 499 cxr-dev images (100%);
  * generated non-radiographs rejected: 39 / 39 (100%): colour photo-like images, colour noise,
    checkerboards (2-128 px squares, also JPEG-compressed), stripes, tiled textures, uniform and
    Gaussian noise, flat grey, a white page of text, a smooth gradient, smooth grey "clouds", a 20:1
    strip and a 16 x 16 thumbnail of a real radiograph.
  * Known misses: a greyscale photograph with large smooth regions and fine detail (a face, a
    landscape) passes every check; so do radiographs of other body parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cxrdemo.data.imageio import ImageMeta, colourfulness_of

MIN_SIDE = 64  # px; smaller cannot show lung detail
ASPECT_RANGE = (0.4, 2.5)  # width / height; the Kermany set spans 0.9-2.2, so ~[0.5, 2.0] would refuse real films
MAX_COLOURFULNESS = 15.0  # Hasler-Suesstrunk M: 0 for grey, ~15 "slightly colourful"; photos score 50-150
MIN_STD = 0.05  # of the [0, 1] image; real radiographs 0.18-0.34
MIN_GREY_BINS = 12  # of 64 bins needed to hold 95% of pixels; radiographs need 35+, patterns and pages 2-6
MAX_FINE_ENERGY = 0.15  # share of variance at the finest scale (128 px view); radiographs 0.002-0.021, noise ~0.65
MIN_FINE_ENERGY = 0.0005  # below it the image is a smooth gradient or blob; radiographs 0.0017 and more
MIN_COARSE_SHARE = 0.25  # share of variance in an 8 x 8 grid of regions (lungs vs mediastinum); radiographs 0.52+
_VIEW = 128

# Computed and digital radiography, and RG (film/screen radiography, e.g. a digitised film).
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL"})
_CHEST_WORDS = ("CHEST", "THORAX", "LUNG")  # vendors write CHEST, CHEST_PA, THORAX...
_MODALITY_NAMES = {"CT": "a CT scan", "MR": "an MR image", "US": "an ultrasound image",
                   "NM": "a nuclear-medicine image", "PT": "a PET image", "MG": "a mammogram", "XA": "an angiogram", "RF": "a fluoroscopy image",
                   "OT": "an image of type 'other'", "SC": "a secondary capture", "SEG": "a segmentation",
                   "IO": "an intra-oral dental X-ray", "PX": "a panoramic dental X-ray", "OP": "an eye photograph",
                   "XC": "a camera photograph", "ES": "an endoscopy image", "SM": "a microscopy slide"}


@dataclass
class CxrCheck:
    """The verdict, a sentence to show when it fails, a [0, 1] score and the reasons in plain words."""

    looks_like_cxr: bool
    warning: str | None
    score: float
    reasons: list[str] = field(default_factory=list)


def _ramp(value: float, threshold: float, upper: bool) -> float:
    """1 far on the good side of a threshold, 0.5 on it, 0 far beyond (a ratio, so scale-free)."""
    if threshold <= 0:
        return 1.0
    ratio = max(value, 1e-12) / threshold
    ratio = ratio if upper else 1.0 / ratio
    return float(1.0 / (1.0 + ratio**4))


def _as_grey(image: np.ndarray | Image.Image) -> tuple[np.ndarray, float]:
    """A float greyscale array (any range) and the colourfulness of the input."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB") if image.mode not in ("L", "I;16", "I", "F") else image)
    a = np.asarray(image, dtype=np.float32)
    colour = 0.0
    if a.ndim == 3 and a.shape[2] >= 3:
        rgb = a[..., :3] * (255.0 if a.max() <= 1.0 else 1.0)
        colour = colourfulness_of(rgb)
        a = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    elif a.ndim == 3:
        a = a[..., 0]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {a.shape}")
    return a, colour


def _range(sample: np.ndarray) -> tuple[float, float]:
    """Robust min-max (0.1 and 99.9 percentiles), as read_image does."""
    lo, hi = (float(v) for v in np.percentile(sample, [0.1, 99.9]))
    return (lo, hi) if hi > lo else (float(sample.min()), float(sample.max()))


def check_dicom_header(meta: ImageMeta | None) -> list[str]:
    """What a DICOM header says against a frontal chest radiograph ([] when it is silent or agrees)."""
    if meta is None or meta.format != "dicom":
        return []
    reasons = []
    modality, part, view = (getattr(meta, k, "") or "" for k in ("modality", "body_part", "view"))
    if modality and modality not in RADIOGRAPH_MODALITIES:
        what = _MODALITY_NAMES.get(modality, "not a radiograph")
        reasons.append(f"its DICOM header says it is {what} (Modality {modality}), not a chest X-ray")
    # A missing BodyPartExamined or ViewPosition says nothing: many real chest films lack them.
    if part and not any(word in part for word in _CHEST_WORDS):
        reasons.append(f"its DICOM header names another body part (BodyPartExamined {part})")
    if view in LATERAL_VIEWS:
        reasons.append(f"its DICOM header says it is a lateral view (ViewPosition {view}); this model learned "
                       "from frontal films")
    return reasons


def check_radiograph(rgb_or_grey: np.ndarray | Image.Image, meta: ImageMeta | None = None) -> CxrCheck:
    """Say whether an image plausibly is a chest radiograph, with the reasons when it is not."""
    grey, colour = _as_grey(rgb_or_grey)
    if meta is not None:
        colour = max(colour, float(getattr(meta, "colourfulness", 0.0)))
    h, w = grey.shape
    step = max(1, int(np.sqrt(grey.size / 250_000)))  # statistics of a subsample: fast on a 3000 px film
    sample = np.nan_to_num(grey[::step, ::step])
    lo, hi = _range(sample)
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    std = float(sample.std()) * scale
    checks: list[tuple[float, str]] = [
        (_ramp(colour, MAX_COLOURFULNESS, upper=True), "it is in colour"),
        (_ramp(min(h, w), MIN_SIDE, upper=False), f"it is very small ({w} x {h} pixels)"),
        (min(_ramp(w / h, ASPECT_RANGE[0], upper=False), _ramp(w / h, ASPECT_RANGE[1], upper=True)),
         f"its shape is unusual ({w} x {h} pixels)"),
        (_ramp(std, MIN_STD, upper=False), "it is almost uniform, with nothing visible"),
    ]
    if std >= MIN_STD / 2:  # the texture statistics are meaningless on a blank image
        full = torch.from_numpy(np.nan_to_num(np.ascontiguousarray(grey)))[None, None]
        view = F.interpolate(full, size=(_VIEW, _VIEW), mode="bilinear", antialias=True, align_corners=False)
        view = ((view - lo) * scale).clamp_(0, 1)
        var = float(view.var()) + 1e-12
        fine = float(((view - F.avg_pool2d(view, 3, 1, 1, count_include_pad=False)) ** 2).mean()) / var
        coarse = float(F.avg_pool2d(view, _VIEW // 8).var()) / var
        # Grey levels from the subsample, not the smoothed view: averaging would make noise look flat.
        hist = np.bincount((np.clip((sample - lo) * scale, 0, 1) * 63.999).astype(np.int64).ravel(), minlength=64)
        bins = int(np.searchsorted(np.sort(hist)[::-1].cumsum(), 0.95 * sample.size)) + 1
        checks += [
            (_ramp(bins, MIN_GREY_BINS, upper=False), "it has only a few grey levels, like a drawing or a pattern"),
            (_ramp(fine, MAX_FINE_ENERGY, upper=True), "it is mostly fine texture or noise"),
            (_ramp(fine, MIN_FINE_ENERGY, upper=False), "it has no fine detail (too smooth)"),
            (_ramp(coarse, MIN_COARSE_SHARE, upper=False), "it lacks the large bright and dark regions of a chest "
                                                           "(lungs, heart, mediastinum)"),
        ]
    checks = [(0.0, why) for why in check_dicom_header(meta)] + checks  # the header speaks first
    reasons = [why for s, why in checks if s < 0.5]
    score = round(min(s for s, _ in checks), 3)
    warning = None
    if reasons:
        warning = (f"This does not look like a chest X-ray ({'; '.join(reasons)}). "
                   "Predictions on it are meaningless.")
    return CxrCheck(looks_like_cxr=not reasons, warning=warning, score=score, reasons=reasons)
