"""Window/level on synthetic DICOM films: the header's windows and VOI LUT as DICOM defines them, the relative
presets, inversion, and the model's input unchanged bit for bit whatever is shown."""

from __future__ import annotations

import io

import numpy as np
import pytest

from cxrdemo import data
from cxrdemo.data import window
from cxrdemo.data.window import Window
from cxrdemo.diagnosis import predict
from tests.test_predict import SECRETS, _dicom, _png

RAMP = np.tile(np.arange(256, dtype=np.uint8), (64, 1))  # columns 0..255, left dark


def _with_voi_lut(img_u8: np.ndarray) -> bytes:
    """A 12-bit film whose header carries a VOI LUT (a square-root curve) and, ignored beside it, a window."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(_dicom(img_u8, bits=12, window=(2048, 4096))))
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", [int(round(65535 * np.sqrt(i / 4095))) for i in range(4096)])  # LUTData
    ds.VOILUTSequence = pydicom.Sequence([item])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_the_header_window_is_shown_as_dicom_defines_it():
    from pydicom import dcmread
    from pydicom.pixels import apply_voi_lut

    raw = _dicom(RAMP, bits=16, window=("30000\\20000", "20000\\8000"))
    rad = predict.read_radiograph(raw, "w.dcm")
    px = rad.stored
    assert px.windows == (Window(30000.0, 20000.0), Window(20000.0, 8000.0)) and not px.invert
    ds = dcmread(io.BytesIO(raw))
    for i, w in enumerate(px.windows):
        expected = apply_voi_lut(ds.pixel_array, ds, index=i) / 65535.0  # pydicom: LINEAR onto the full range
        assert np.allclose(window.apply_window(px, w), expected, atol=1e-4)


def test_the_header_voi_lut_is_shown_through_its_table():
    from pydicom import dcmread
    from pydicom.pixels import apply_voi_lut

    raw = _with_voi_lut(RAMP)
    rad = predict.read_radiograph(raw, "lut.dcm")
    assert len(rad.stored.tables) == 1 and "VOI LUT applied" in rad.meta.notes
    ds = dcmread(io.BytesIO(raw))
    expected = apply_voi_lut(ds.pixel_array, ds, index=0).astype(np.float64)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert np.allclose(window.apply_table(rad.stored, 0), expected, atol=1e-4)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_the_full_range_looks_like_the_film_as_read_and_presets_pick_brightness_bands(photometric):
    rad = predict.read_radiograph(_dicom(RAMP, photometric, 12), "r.dcm")
    px = rad.stored
    assert px.invert is (photometric == "MONOCHROME1")
    full = window.apply_window(px, window.preset(px, "full"))
    assert np.allclose(full, rad.grey, atol=0.01)  # bright bone stays bright, whatever the photometric
    lung = window.apply_window(px, window.preset(px, "lung"))  # shown brightness 0.05..0.55 spread to 0..1
    bright = rad.grey[0]
    assert np.all(lung[0][bright <= 0.05] == 0.0) and np.all(lung[0][bright >= 0.55] == 1.0)
    assert np.allclose(lung[0][(bright > 0.1) & (bright < 0.5)],
                       ((bright - 0.05) / 0.5)[(bright > 0.1) & (bright < 0.5)], atol=0.01)
    bone = window.apply_window(px, window.preset(px, "bone"))
    assert bone.mean() < full.mean() < lung.mean()
    inverted = window.apply_window(px, window.preset(px, "full"), invert=True)
    assert np.allclose(inverted, 1.0 - full, atol=1e-6)
    c, w = window.shown_fractions(px, window.preset(px, "lung"))
    assert (c, w) == pytest.approx(window.RELATIVE_PRESETS["lung"])


def test_any_other_image_is_windowed_from_its_grey():
    rad = predict.read_radiograph(_png(RAMP), "r.png")
    px = rad.stored
    assert (px.lo, px.hi, px.windows, px.tables) == (0.0, 1.0, (), ())
    assert np.allclose(window.apply_window(px, Window(0.5, 1.0, "LINEAR_EXACT")), rad.grey, atol=1e-6)


@pytest.mark.parametrize("kind", ["plain", "mono1", "window", "rescale", "lut"])
def test_the_models_input_is_unchanged_bit_for_bit_whatever_the_window(kind, patch_model):
    raw = {"plain": lambda: _dicom(RAMP), "mono1": lambda: _dicom(RAMP, "MONOCHROME1", 12),
           "window": lambda: _dicom(RAMP, window=(20000, 9000)),
           "rescale": lambda: _dicom(RAMP, slope=2.0, intercept=-1024.0, window=(100, 800)),
           "lut": lambda: _with_voi_lut(RAMP)}[kind]()
    grey_plain, _ = data.read_image(raw, "f.dcm")  # the reader the model has always used
    rad = predict.read_radiograph(raw, "f.dcm")
    assert np.array_equal(rad.grey, grey_plain)
    before = predict.prepare(patch_model, rad.grey).clone()
    values = rad.stored.values.copy()
    px = rad.stored
    shown = [window.apply_window(px, w, inv) for w in (*px.windows, *(window.preset(px, n) for n in
             ("full", "lung", "mediastinum", "bone")), Window(1.0, 2.0, "SIGMOID")) for inv in (False, True)]
    shown += [window.apply_table(px, i) for i in range(len(px.tables))]
    assert all(s.dtype == np.float32 and 0.0 <= s.min() and s.max() <= 1.0 for s in shown)
    assert np.array_equal(rad.grey, grey_plain) and np.array_equal(px.values, values)
    assert np.array_equal(predict.prepare(patch_model, rad.grey).numpy(), before.numpy())


def test_the_display_copy_is_small_and_keeps_no_identifier():
    big = np.tile(np.arange(256, dtype=np.uint8), (1500, 12))[:1500, :3000]
    rad = predict.read_radiograph(_dicom(big, window=(30000, 20000)), "big.dcm")
    assert max(rad.stored.values.shape) <= 1024 and rad.stored.values.dtype == np.float32
    text = repr(rad.stored) + repr(rad.stored.windows)
    for secret in SECRETS:
        assert secret not in text
    assert {f for f in vars(rad.stored)} == {"values", "lo", "hi", "invert", "windows", "tables"}
