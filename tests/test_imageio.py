"""read_image / resize_to_uint8 / normalize_batch: every format we promise, every failure as one clear ImageReadError."""

from __future__ import annotations

import dataclasses
import io
import struct
import time
import warnings
import zlib

import numpy as np
import pydicom
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid

from cxrdemo.data.imageio import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    ImageMeta,
    normalize_batch,
    read_image,
    resize_to_uint8,
)
from cxrdemo.errors import ImageReadError

IDENTIFIERS = {"PatientName": "Doe^Jane", "PatientID": "MRN-4455667", "PatientBirthDate": "19700101",
               "AccessionNumber": "ACC-998877", "InstitutionName": "St Elsewhere Hospital",
               "ReferringPhysicianName": "House^Gregory", "StudyDate": "20240229"}


def encode(arr: np.ndarray | Image.Image, fmt: str = "PNG", **kw) -> bytes:
    im = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def ramp(h: int = 32, w: int = 48, dtype=np.uint8, top: int = 255) -> np.ndarray:
    return (np.linspace(0, top, w)[None, :].repeat(h, 0)).astype(dtype)


def make_dicom(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits: int = 16, preamble: bool = True,
               **elements) -> bytes:
    """A minimal DX DICOM (with patient identifiers, to prove none leaks) holding `pixels` (HxW or FxHxW)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    for k, v in IDENTIFIERS.items():
        setattr(ds, k, v)
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.astype(np.uint8 if bits <= 8 else np.uint16).tobytes()
    for k, v in elements.items():
        setattr(ds, k, v)
    buf = io.BytesIO()
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:
        del ds.file_meta
        pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def png_with_header(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A tiny PNG whose IHDR claims width x height pixels (a decompression bomb's header)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def check_output(img: np.ndarray) -> None:
    assert img.dtype == np.float32 and img.ndim == 2 and img.flags.c_contiguous
    assert 0.0 <= img.min() and img.max() <= 1.0


# ---- raster formats --------------------------------------------------------------------------------

def test_constants():
    assert IMAGE_SUFFIXES == {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"}
    assert MAX_PIXELS == 50_000_000


def test_png_8bit_from_path_and_bytes(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(encode(ramp()))
    img, meta = read_image(path)
    check_output(img)
    assert img.shape == (32, 48)
    assert (meta.width, meta.height, meta.format, meta.mode, meta.bits) == (48, 32, "png", "L", 8)
    assert img[0, 0] == 0.0 and img[0, -1] == 1.0 and np.all(np.diff(img[0]) >= 0)
    img2, _ = read_image(path.read_bytes())
    np.testing.assert_array_equal(img, img2)
    img3, _ = read_image(str(path))
    np.testing.assert_array_equal(img, img3)


def test_png_16bit_keeps_its_range():
    img, meta = read_image(encode(ramp(dtype=np.uint16, top=4095)))
    check_output(img)
    assert meta.bits == 16 and meta.mode.startswith("I;16")
    assert img[0, 0] == 0.0 and img[0, -1] == 1.0 and len(np.unique(img)) == 48


def test_robust_normalisation_ignores_a_hot_pixel():
    arr = np.full((100, 100), 100, np.uint16)
    arr[:50] = 200
    arr[0, 0] = 60000  # one saturated detector element must not squash the image into black
    img, _ = read_image(encode(arr))
    assert img[60, 60] == pytest.approx(0.0) and img[10, 10] == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_modes_become_grey(mode):
    grey = ramp()
    rgb = Image.fromarray(np.stack([grey] * 3, -1))
    rgb = rgb.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else rgb.convert(mode)
    img, meta = read_image(encode(rgb))
    check_output(img)
    assert img.shape == (32, 48) and meta.mode == mode
    assert meta.colourfulness < 1.0  # grey stored as colour is still grey
    assert np.corrcoef(img.ravel(), grey.ravel().astype(float))[0, 1] > 0.99


def test_colourful_image_is_measured():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:16, :, 0] = 255
    rgb[16:, :, 2] = 255
    img, meta = read_image(encode(rgb))
    assert meta.colourfulness > 50 and "colour image converted to grey" in meta.notes


def test_rgba_transparency_flattened():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:, :4, 3] = 255  # left half opaque white, right half transparent
    img, meta = read_image(encode(rgba))
    assert img[:, :4].min() == 1.0 and img[:, 4:].max() == 0.0
    assert "transparency flattened onto black" in meta.notes


def test_cmyk_jpeg():
    im = Image.fromarray(np.stack([ramp()] * 3, -1)).convert("CMYK")
    img, meta = read_image(encode(im, "JPEG", quality=95))
    check_output(img)
    assert meta.format == "jpeg" and meta.mode == "CMYK" and "CMYK converted to grey" in meta.notes
    assert img[:, -5:].mean() > img[:, :5].mean() + 0.5


def test_exif_rotation_is_applied():
    arr = np.full((20, 40), 255, np.uint8)  # stored 40 wide, 20 high
    arr[:6, :6] = 0  # dark marker top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img, meta = read_image(encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes()))
    assert img.shape == (40, 20) and (meta.width, meta.height) == (20, 40)
    assert "EXIF rotation applied" in meta.notes
    assert img[:6, -6:].mean() < 0.2 and img[:6, :6].mean() > 0.8  # the marker moved to the top-right


def test_animated_gif_uses_first_frame():
    frames = [Image.fromarray(np.full((16, 16), v, np.uint8)).convert("P") for v in (255, 0, 128)]
    frames[0].paste(0, (0, 0, 8, 16))  # first frame: left black, right white
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    img, meta = read_image(buf.getvalue())
    assert meta.frames == 3 and "first of 3 frames used" in meta.notes and meta.format == "gif"
    assert img[:, :8].max() == 0.0 and img[:, 8:].min() == 1.0


@pytest.mark.parametrize("fmt,suffix", [("BMP", ".bmp"), ("TIFF", ".tif")])
def test_bmp_and_tiff(tmp_path, fmt, suffix):
    path = tmp_path / f"a{suffix}"
    path.write_bytes(encode(ramp(), fmt))
    img, meta = read_image(path)
    assert img.shape == (32, 48) and meta.format == fmt.lower()


def test_one_pixel_image_reads():
    img, meta = read_image(encode(np.array([[7]], np.uint8)))
    assert img.shape == (1, 1) and img[0, 0] == 0.0 and any("blank" in n for n in meta.notes)
    assert resize_to_uint8(img, 8).shape == (1, 8, 8)


# ---- failures ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content,name,words", [
    (b"", "empty.png", "empty"),
    (b"Patient notes: cough for 3 days.\n", "notes.png", "text file"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "report.png", "PDF document"),
    (b"PK\x03\x04\x14\x00\x00\x00", "scans.jpg", "ZIP archive"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "IMG_0001.jpg", "HEIC"),
    (b"<!DOCTYPE html><html><body>", "page.png", "web page"),
    (bytes(range(256)) * 2, "random.png", "not an image this app can read"),
])
def test_not_an_image(tmp_path, content, name, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=words):
        read_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(fmt):
    rng = np.random.default_rng(0)
    data = encode(rng.integers(0, 255, (64, 64), dtype=np.uint8), fmt)
    for cut in (len(data) // 2, 40, 12):
        with pytest.raises(ImageReadError, match="truncated|damaged"):
            read_image(data[:cut])


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="could not be found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


@pytest.mark.parametrize("side", [20000, 10000, 8000])
def test_decompression_bomb_refused_from_header(monkeypatch, side):
    """20000 px trips Pillow's error, 10000 its warning, 8000 only our limit: all end as our error, undecoded."""
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(1) or real_load(self))
    data = png_with_header(side, side)
    assert len(data) < 200
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageReadError, match="too large"):
            read_image(data)
    assert time.perf_counter() - start < 1.0 and not loads and not caught


# ---- DICOM -----------------------------------------------------------------------------------------------

def test_dicom_monochrome1_is_inverted():
    pixels = ramp(16, 16, np.uint16, 4000)
    m2, meta2 = read_image(make_dicom(pixels, photometric="MONOCHROME2", bits=12))
    m1, meta1 = read_image(make_dicom(pixels, photometric="MONOCHROME1", bits=12))
    check_output(m1)
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert meta1.mode == "MONOCHROME1" and "inverted MONOCHROME1" in meta1.notes
    assert (meta2.format, meta2.bits, meta2.width, meta2.height) == ("dicom", 12, 16, 16)


def test_dicom_rescale_then_window():
    # Stored 0..4000 with intercept -1000 is -1000..3000 in modality units; a window at 0 +- 100 must
    # act on those units: stored values under 900 black, over 1100 white.
    pixels = np.linspace(0, 4000, 64 * 64).reshape(64, 64).astype(np.uint16)
    img, meta = read_image(make_dicom(pixels, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=0,
                                      WindowWidth=200))
    assert "rescale slope/intercept applied" in meta.notes and "window centre/width applied" in meta.notes
    assert img[pixels < 880].max() == 0.0 and img[pixels > 1120].min() == 1.0
    mid = img[(pixels > 950) & (pixels < 1050)]
    assert 0.1 < mid.mean() < 0.9


def test_dicom_window_alone_and_8bit():
    pixels = np.linspace(0, 4095, 32 * 32).reshape(32, 32).astype(np.uint16)
    img, _ = read_image(make_dicom(pixels, bits=12, WindowCenter=2048, WindowWidth=1024))
    assert img[pixels < 1500].max() == 0.0 and img[pixels > 2600].min() == 1.0
    img8, meta8 = read_image(make_dicom(ramp(8, 8), bits=8))
    assert meta8.bits == 8 and img8[0, -1] == 1.0


def test_dicom_multiframe_uses_first_frame():
    frames = np.stack([ramp(16, 16, np.uint16, 1000), np.zeros((16, 16), np.uint16), np.full((16, 16), 7, np.uint16)])
    img, meta = read_image(make_dicom(frames))
    assert meta.frames == 3 and "first of 3 frames used" in meta.notes
    assert img[0, 0] == 0.0 and img[0, -1] == 1.0


def test_dicom_without_preamble_by_name(tmp_path):
    data = make_dicom(ramp(8, 8, np.uint16, 500), preamble=False)
    assert data[128:132] != b"DICM"
    img, meta = read_image(data, name="scan.dcm")
    assert meta.format == "dicom" and img.shape == (8, 8)
    with pytest.raises(ImageReadError):  # without the name nothing says it is DICOM
        read_image(data)
    named_png = tmp_path / "looks.png"  # the preamble wins over a wrong suffix
    named_png.write_bytes(make_dicom(ramp(8, 8, np.uint16, 500)))
    assert read_image(named_png)[1].format == "dicom"


def test_dicom_without_pixel_data():
    ds = pydicom.dcmread(io.BytesIO(make_dicom(ramp(8, 8, np.uint16))))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(buf.getvalue())


def compressed_dicom() -> bytes:
    """A JPEG Lossless DICOM (no decoder for it is installed)."""
    ds = pydicom.dcmread(io.BytesIO(make_dicom(ramp(8, 8, np.uint16))))
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + b"\x00" * 32 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_dicom_compressed_without_decoder_names_it():
    buf = io.BytesIO(compressed_dicom())
    with pytest.raises(ImageReadError, match="JPEG Lossless.*no decoder"):
        read_image(buf.getvalue())


def test_no_identifier_reaches_meta():
    data = make_dicom(np.stack([ramp(8, 8, np.uint16, 900)] * 2), photometric="MONOCHROME1",
                      RescaleSlope=2, RescaleIntercept=-10, WindowCenter=800, WindowWidth=1200)
    _, meta = read_image(data, name="x.dcm")
    assert {f.name for f in dataclasses.fields(ImageMeta)} == {
        "width", "height", "format", "mode", "bits", "frames", "notes", "colourfulness",
        "modality", "body_part", "view",  # coded header values (DX, CHEST, PA): what was imaged, not who
        "age_years", "sex"}  # the only patient facts that may be shown (issue 28): the dates stay in the reader
    assert (meta.modality, meta.body_part, meta.view) == ("DX", "", "")
    assert (meta.age_years, meta.sex) == (54.16, "")  # from the birth and study dates, neither of which is kept
    text = repr(dataclasses.asdict(meta))
    for value in IDENTIFIERS.values():
        for part in value.split("^"):
            assert part not in text
    assert "1.2.840" not in text and "Doe" not in str(meta)


# ---- preprocessing ------------------------------------------------------------------------------------------

def test_resize_squashes_whole_image():
    img = np.zeros((50, 200), np.float32)
    img[:, :20] = 1.0  # a bright band at the far left survives: no centre crop
    out = resize_to_uint8(img, 32)
    assert out.shape == (1, 32, 32) and out.dtype == torch.uint8
    assert out[0, :, 0].min() == 255 and out[0, :, -1].max() == 0


def test_normalize_batch_of_a_resized_image():
    img, meta = read_image(encode(ramp()))
    x = resize_to_uint8(img, 24)
    assert x.shape == (1, 24, 24) and x.dtype == torch.uint8 and meta.format == "png"
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    y = normalize_batch(x.unsqueeze(0).repeat(2, 1, 1, 1), mean, std)
    assert y.shape == (2, 3, 24, 24) and y.dtype == torch.float32
    for c, (m, sd) in enumerate(zip(mean, std)):
        np.testing.assert_allclose(y[1, c, 3, 5].item(), (x[0, 3, 5].item() / 255 - m) / sd, atol=1e-5)
    torch.testing.assert_close(normalize_batch(x.unsqueeze(0).float() / 255, mean, std),
                               normalize_batch(x.unsqueeze(0), mean, std))
    # The mean/std passed in (a model's preprocessing record) are the ones applied, not module constants.
    half = normalize_batch(x.unsqueeze(0), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    np.testing.assert_allclose(half[0, :, 3, 5].numpy(), (x[0, 3, 5].item() / 255 - 0.5) / 0.5, atol=1e-6)


# ---- properties ---------------------------------------------------------------------------------------------

def _read_or_error(data: bytes, name: str) -> None:
    try:
        img, meta = read_image(data, name)
    except ImageReadError as err:
        assert str(err).endswith(".") and "\n" not in str(err)
        return
    check_output(img)
    assert isinstance(meta, ImageMeta)


FAST = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
VALID = {"png": encode(ramp(12, 12)), "jpeg": encode(ramp(12, 12), "JPEG"), "gif": encode(ramp(12, 12), "GIF"),
         "dicom": make_dicom(ramp(6, 6, np.uint16, 900))}


@FAST
@given(st.binary(max_size=600), st.sampled_from(["", "x.png", "x.dcm", "x.jpg", "x.tif"]))
def test_arbitrary_bytes_raise_only_our_error(data, name):
    _read_or_error(data, name)


@pytest.mark.slow
@FAST
@given(st.sampled_from(sorted(VALID)), st.data())
def test_mutated_files_raise_only_our_error(kind, draw):
    data = bytearray(VALID[kind])
    for _ in range(draw.draw(st.integers(1, 6))):
        op, pos = draw.draw(st.sampled_from(["flip", "cut", "insert"])), draw.draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] = draw.draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:pos + draw.draw(st.integers(1, 64))]
        else:
            data[pos:pos] = draw.draw(st.binary(min_size=1, max_size=8))
        if not data:
            break
    _read_or_error(bytes(data), draw.draw(st.sampled_from(["", f"x.{kind}"])))
