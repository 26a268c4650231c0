"""check_radiograph: every real demo radiograph passes; generated non-radiographs are refused with a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cxrdemo.data.imageio import ImageMeta, read_image
from cxrdemo.diagnosis.quality import CxrCheck, check_dicom_header, check_radiograph
from tests.test_imageio import make_dicom


def smooth_field(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    small = (rng.random((max(2, h // scale), max(2, w // scale))) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32) / 255


def colour_photo(seed: int, h: int = 240, w: int = 320) -> np.ndarray:
    """Smooth colour fields with coloured shapes: what a phone photo looks like to these statistics."""
    rng = np.random.default_rng(seed)
    rgb = np.stack([smooth_field(rng, h, w, int(rng.integers(8, 64))) for _ in range(3)], -1) * 255
    im = Image.fromarray(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = [x0, y0, x0 + int(rng.integers(10, 120)), y0 + int(rng.integers(10, 120))]
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return np.asarray(im)


def checkerboard(square: int, size: int = 256) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return ((x // square + y // square) % 2 * 255).astype(np.uint8)


def stripes(period: float, size: int = 256) -> np.ndarray:
    x = np.mgrid[:size, :size][1]
    return ((0.5 + 0.5 * np.sin(2 * np.pi * x / period)) * 255).astype(np.uint8)


def tiled(tile: int, size: int = 256) -> np.ndarray:
    t = np.random.default_rng(tile).integers(0, 256, (tile, tile))
    return np.tile(t, (size // tile, size // tile)).astype(np.uint8)


def document(seed: int, h: int = 330, w: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    im = Image.new("L", (w, h), 250)
    draw = ImageDraw.Draw(im)
    for y in range(20, h - 20, 14):
        x = 20
        while x < w - 30:
            word = int(rng.integers(8, 40))
            draw.rectangle([x, y, x + word, y + 6], fill=20)
            x += word + 6
    return np.asarray(im)


def encoded(arr: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def demo_files(demo_data_dir) -> list:
    return sorted(p for p in demo_data_dir.rglob("*") if p.suffix.lower() in (".jpg", ".png"))


@pytest.fixture(scope="module")
def real_grey(demo_data_dir) -> np.ndarray:
    return read_image(demo_files(demo_data_dir)[0])[0]


def non_radiographs(real: np.ndarray) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    real8 = (real * 255).astype(np.uint8)
    cases = {f"colour photo {s}": encoded(colour_photo(s), "JPEG", quality=85) for s in range(5)}
    cases |= {f"checkerboard {n}px": encoded(checkerboard(n)) for n in (2, 4, 8, 16, 32, 64, 128)}
    cases |= {f"checkerboard {n}px jpeg": encoded(checkerboard(n), "JPEG", quality=75) for n in (8, 32, 64)}
    cases |= {f"stripes {p}px": encoded(stripes(p)) for p in (3, 8, 20, 64)}
    cases |= {f"tiled texture {t}px": encoded(tiled(t)) for t in (4, 16, 64)}
    cases |= {f"uniform noise {s}": encoded(rng.integers(0, 256, (256, 256), dtype=np.uint8)) for s in range(3)}
    cases |= {f"gaussian noise {s}": encoded(np.clip(128 + 40 * rng.standard_normal((256, 256)), 0, 255)
                                               .astype(np.uint8)) for s in range(3)}
    cases |= {f"flat grey {v}": encoded(np.full((256, 256), v, np.uint8)) for v in (0, 128, 255)}
    cases |= {"document": encoded(document(0)), "document jpeg": encoded(document(1), "JPEG", quality=80),
              "gradient": encoded(np.tile(np.linspace(0, 255, 256).astype(np.uint8), (256, 1))),
              "grey clouds 0": encoded((smooth_field(rng, 256, 256, 32) * 255).astype(np.uint8)),
              "grey clouds 1": encoded((smooth_field(rng, 256, 256, 32) * 255).astype(np.uint8)),
              "20:1 strip of a radiograph": encoded(np.asarray(Image.fromarray(real8).resize((2000, 100)))),
              "16x16 radiograph": encoded(np.asarray(Image.fromarray(real8).resize((16, 16)))),
              "colour noise": encoded(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))}
    return cases


def test_every_demo_radiograph_passes(demo_data_dir):
    files = demo_files(demo_data_dir)
    results = {p.name: check_radiograph(*read_image(p)) for p in files}
    failed = {name: r.reasons for name, r in results.items() if not r.looks_like_cxr}
    assert len(files) == 120 and not failed, f"true-positive rate {1 - len(failed) / len(files):.1%}: {failed}"
    assert all(r.warning is None and r.reasons == [] and 0.5 <= r.score <= 1 for r in results.values())


@pytest.fixture(scope="module")
def cases(real_grey) -> dict[str, bytes]:
    return non_radiographs(real_grey)


def test_every_generated_non_radiograph_is_refused(cases):
    results = {name: check_radiograph(*read_image(data)) for name, data in cases.items()}
    passed = [name for name, r in results.items() if r.looks_like_cxr]
    assert len(cases) == 39 and not passed, f"accepted as radiographs: {passed}"
    for name, r in results.items():
        assert r.reasons and 0 <= r.score < 0.5
        assert r.warning.startswith("This does not look like a chest X-ray (") and "meaningless" in r.warning


@pytest.mark.parametrize("name,reason", [
    ("colour photo 0", "in colour"), ("uniform noise 0", "noise"), ("flat grey 128", "uniform"),
    ("20:1 strip of a radiograph", "shape"), ("16x16 radiograph", "small"), ("checkerboard 64px", "grey levels"),
    ("gradient", "too smooth"), ("document", "bright and dark regions"),
])
def test_reasons_are_specific(cases, name, reason):
    result = check_radiograph(*read_image(cases[name]))
    assert any(reason in r for r in result.reasons), result.reasons


def test_inputs_grey_rgb_pil_and_meta(real_grey):
    assert isinstance(check_radiograph(real_grey), CxrCheck) and check_radiograph(real_grey).looks_like_cxr
    as_uint8 = (real_grey * 255).astype(np.uint8)
    assert check_radiograph(as_uint8).looks_like_cxr
    assert check_radiograph(np.stack([as_uint8] * 3, -1)).looks_like_cxr
    assert check_radiograph(Image.fromarray(as_uint8)).looks_like_cxr
    assert check_radiograph(1.0 - real_grey).looks_like_cxr  # a film shown inverted is still a radiograph
    tinted = np.stack([as_uint8, as_uint8 // 2, as_uint8 // 4], -1)
    assert not check_radiograph(Image.fromarray(tinted)).looks_like_cxr
    # read_image returns grey; only the meta carries the colour it saw
    meta = ImageMeta(width=real_grey.shape[1], height=real_grey.shape[0], format="jpeg", mode="RGB", bits=8,
                     colourfulness=80.0)
    result = check_radiograph(real_grey, meta)
    assert not result.looks_like_cxr and result.reasons == ["it is in colour"]


def test_large_image_is_quick():
    import time

    big = np.random.default_rng(0).random((3000, 3000), dtype=np.float32)
    start = time.process_time()
    assert not check_radiograph(big).looks_like_cxr
    assert time.process_time() - start < 2.0


# ---- the DICOM header speaks first (issue 15) -------------------------------------------------------

def chest_dicom(real: np.ndarray, **elements) -> bytes:
    """A DX DICOM holding a real demo radiograph (12 bits stored), with the given header elements."""
    return make_dicom((real * 4095).astype(np.uint16), bits=12, **elements)


@pytest.mark.parametrize("elements", [
    {}, {"Modality": "CR"}, {"BodyPartExamined": "CHEST"}, {"BodyPartExamined": "CHEST_PA", "ViewPosition": "PA"},
    {"BodyPartExamined": "THORAX", "ViewPosition": "AP"}, {"ViewPosition": ""}, {"BodyPartExamined": ""},
])
def test_dicom_header_of_a_frontal_chest_film_does_not_flag(real_grey, elements):
    img, meta = read_image(chest_dicom(real_grey, **elements))
    assert meta.modality == elements.get("Modality", "DX")
    assert check_dicom_header(meta) == []
    assert check_radiograph(img, meta).looks_like_cxr  # missing BodyPartExamined or ViewPosition says nothing


@pytest.mark.parametrize("elements,reason", [
    ({"Modality": "CT"}, "CT scan (Modality CT)"), ({"Modality": "US"}, "ultrasound image (Modality US)"),
    ({"Modality": "XX"}, "not a radiograph (Modality XX)"),
    ({"BodyPartExamined": "HAND"}, "another body part (BodyPartExamined HAND)"),
    ({"BodyPartExamined": "SKULL", "ViewPosition": "PA"}, "BodyPartExamined SKULL"),
    ({"ViewPosition": "LL"}, "lateral view (ViewPosition LL)"), ({"ViewPosition": "RL"}, "ViewPosition RL"),
    ({"BodyPartExamined": "CHEST", "ViewPosition": "LATERAL"}, "ViewPosition LATERAL"),
])
def test_dicom_header_flags_modality_body_part_and_lateral_view(real_grey, elements, reason):
    img, meta = read_image(chest_dicom(real_grey, **elements))
    result = check_radiograph(img, meta)
    assert not result.looks_like_cxr and result.score == 0.0
    assert len(result.reasons) == 1 and reason in result.reasons[0], result.reasons
    assert result.warning.startswith("This does not look like a chest X-ray (its DICOM header")


def test_header_reasons_come_first_and_only_for_dicom(real_grey):
    img, meta = read_image(chest_dicom(real_grey, Modality="MR", BodyPartExamined="KNEE", ViewPosition="LL"))
    reasons = check_radiograph(img, meta).reasons
    assert [r.split("(")[1].split()[0] for r in reasons[:3]] == ["Modality", "BodyPartExamined", "ViewPosition"]
    png_meta = ImageMeta(width=10, height=10, format="png", mode="L", bits=8, modality="CT")
    assert check_dicom_header(png_meta) == [] and check_dicom_header(None) == []


MR_ENCODINGS = ("MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm",
                "MR_small_padded.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                "MR_small_jpeg_ls_lossless.dcm")


def test_pydicom_ct_and_mr_test_files_are_flagged_by_modality():
    """The real CT and MR files shipped inside pydicom (they carry no BodyPartExamined) are not chest X-rays."""
    from pydicom.data import get_testdata_file

    from cxrdemo.errors import ImageReadError

    flagged, unreadable = [], []
    for name in ("CT_small.dcm", *MR_ENCODINGS):
        try:
            img, meta = read_image(get_testdata_file(name, download=False))
        except ImageReadError:  # a compression with no decoder installed: refused before any prediction
            unreadable.append(name)
            continue
        result = check_radiograph(img, meta)
        assert not result.looks_like_cxr, name
        assert f"(Modality {meta.modality})" in result.reasons[0] and meta.modality in ("CT", "MR"), name
        assert meta.body_part == "" and meta.view == ""
        flagged.append(name)
    assert len(flagged) >= 7 and "CT_small.dcm" in flagged, (flagged, unreadable)
