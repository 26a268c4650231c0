"""Memory and uploads (issue 17): deflated DICOM inflated with a limit, no lock held while decoding,
shrink on read (draft JPEG, box reduce right after decoding), absurd aspect ratios refused, display copies."""

from __future__ import annotations

import io
import threading
import time
import tracemalloc
import zlib

import numpy as np
import pydicom
import pytest
from PIL import ImageFile
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from cxrdemo.data import deflate, shrink
from cxrdemo.data.imageio import read_image
from cxrdemo.errors import ImageReadError
from tests.test_imageio import encode, make_dicom, png_with_header, ramp

MB = 2**20


def deflated(dicom: bytes) -> bytes:
    """The same DICOM saved as Deflated Explicit VR Little Endian (pydicom deflates on writing)."""
    ds = pydicom.dcmread(io.BytesIO(dicom))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def deflate_bomb(inflated_mb: int = 300) -> bytes:
    """A ~0.3 MB deflated DICOM whose data set unpacks to `inflated_mb` MB (a header, then a huge PixelData)."""
    ds = pydicom.dcmread(io.BytesIO(make_dicom(ramp(64, 64, np.uint16))))
    del ds.PixelData
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + (inflated_mb * MB).to_bytes(4, "little")
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = comp.compress(body.getvalue() + pixel_header) + comp.flush(zlib.Z_SYNC_FLUSH)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = zeros.compress(b"\0" * MB) + zeros.flush(zlib.Z_SYNC_FLUSH)  # decodes to 1 MB of zeros wherever it sits
    meta = pydicom.dcmread(io.BytesIO(make_dicom(ramp(8, 8, np.uint16)))).file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta)
    return out.getvalue() + head + block * inflated_mb + b"\x03\x00"  # an empty final block ends the stream


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return deflate_bomb()


def peak_traced(fn) -> tuple[object, float]:
    """fn()'s result and the peak Python/numpy memory it allocated, in MB (decoders' own buffers not counted)."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()


# ---- deflated DICOM ---------------------------------------------------------------------------------------

def test_deflated_dicom_reads_like_the_uncompressed_one():
    plain = make_dicom(ramp(40, 56, np.uint16, 4000), RescaleSlope=2, RescaleIntercept=-100)
    img, meta = read_image(deflated(plain))
    ref, ref_meta = read_image(plain)
    np.testing.assert_array_equal(img, ref)
    assert (meta.width, meta.height, meta.bits) == (56, 40, 16)
    assert "inflated (deflate-compressed file)" in meta.notes


def test_deflate_bomb_is_one_sentence_and_never_unpacked_whole(bomb):
    """Fails on ecfa98d: pydicom unpacks all 300 MB (and more while parsing) before any check."""
    assert len(bomb) < MB
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError) as err:
            read_image(bomb)
        peak = tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()
    assert "unpacks to more than 160 MB" in str(err.value) and str(err.value).count(".") == 1
    assert peak < 1.5 * deflate.MAX_INFLATED_BYTES / MB


def test_damaged_deflate_stream_is_a_sentence():
    data = deflated(make_dicom(ramp(40, 56, np.uint16, 4000)))
    broken = data[:400] + bytes(b ^ 0x5A for b in data[400:])
    with pytest.raises(ImageReadError):
        read_image(broken)


# ---- no lock held while decoding --------------------------------------------------------------------------

def _timed_small_read_while(slow_read) -> float:
    small = make_dicom(ramp(32, 32, np.uint16, 4000))
    read_image(small)  # warm: pydicom imported
    t = threading.Thread(target=slow_read, daemon=True)
    t.start()
    time.sleep(0.3)  # the slow read is now decoding
    start = time.perf_counter()
    img, _ = read_image(small)
    elapsed = time.perf_counter() - start
    t.join(30)
    assert img.shape == (32, 32)
    return elapsed


@pytest.mark.slow
def test_a_slow_decode_does_not_stall_another_read(monkeypatch):
    """Fails on ecfa98d: one process-wide lock was held for the whole decode (the small read waited ~3 s)."""
    real_load = ImageFile.ImageFile.load

    def load(self):
        if self.size == (333, 333):
            time.sleep(3)  # a slow decoder (a huge or hostile file)
        return real_load(self)
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    slow = encode(ramp(333, 333))
    results = []
    assert _timed_small_read_while(lambda: results.append(read_image(slow))) < 1.0
    assert results and results[0][0].shape == (333, 333)


def test_a_deflate_bomb_does_not_stall_another_read(bomb):
    """Fails on ecfa98d: the bomb's unbounded inflate ran under the lock every read takes."""
    caught = []

    def read_bomb():
        try:
            read_image(bomb)
        except ImageReadError as err:
            caught.append(err)
    assert _timed_small_read_while(read_bomb) < 1.0
    assert caught


def test_warnings_of_one_thread_are_not_counted_for_another(monkeypatch):
    """Each read counts only the decoder warnings of its own file, even when reads overlap."""
    import warnings

    real_load = ImageFile.ImageFile.load

    def load(self):
        if self.size == (111, 111) and not getattr(self, "warned", False):  # load runs again for asarray
            self.warned = True
            warnings.warn("damaged", UserWarning)
            time.sleep(0.5)
        return real_load(self)
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("noisy", read_image(encode(ramp(111, 111)))))
    t.start()
    time.sleep(0.1)
    quiet = read_image(encode(ramp(64, 64)))
    t.join()
    assert not any("problem" in n for n in quiet[1].notes)
    assert "the decoder reported 1 problem(s) with this file" in out["noisy"][1].notes


# ---- shrink on read ---------------------------------------------------------------------------------------

def test_shrink_policy_is_a_record():
    assert shrink.shrink_policy() == {"max_side": 2048, "method": "box", "max_aspect": 20}
    assert shrink.shrink_factor(2048, 100) == 1 and shrink.shrink_factor(2049, 100) == 2
    assert shrink.shrink_factor(7000, 7000) == 4


def test_reduce_array_is_the_block_mean_including_edge_blocks():
    a = np.arange(7 * 5, dtype=np.uint16).reshape(7, 5) * 10
    r = shrink.reduce_array(a, 3)
    assert r.shape == (3, 2) and r.dtype == np.uint16
    assert r[0, 0] == round(a[:3, :3].mean()) and r[0, 1] == round(a[:3, 3:].mean())
    assert r[2, 0] == round(a[6:, :3].mean()) and r[2, 1] == round(a[6:, 3:].mean())
    rgb = np.random.default_rng(0).random((9, 10, 4), dtype=np.float32)
    np.testing.assert_allclose(shrink.reduce_array(rgb, 2)[1, 4], rgb[2:4, 8:10].mean((0, 1)), rtol=1e-5)
    assert shrink.reduce_array(a, 1) is a


@pytest.mark.slow
def test_large_colour_jpeg_is_drafted_and_reduced_without_a_full_size_float_copy():
    """Fails on ecfa98d: a 5000 x 5000 RGB JPEG was read at full size through a float32 RGBA copy (400 MB)."""
    y, x = np.mgrid[:5000, :5000]
    rgb = np.stack([(x // 20) % 256, (y // 20) % 256, ((x + y) // 40) % 256], -1).astype(np.uint8)
    jpeg = encode(rgb, "JPEG", quality=80)
    del rgb, x, y
    (img, meta), peak = peak_traced(lambda: read_image(jpeg))
    assert max(img.shape) <= 2048 and img.shape[0] == img.shape[1]
    assert (meta.width, meta.height) == (5000, 5000)
    assert any(n.startswith("reduced to") for n in meta.notes)
    assert peak < 100


@pytest.mark.parametrize("make, shape", [
    (lambda: encode(ramp(3000, 2600, np.uint16, 60000)), (1500, 1300)),  # 16-bit PNG
    (lambda: encode(np.dstack([ramp(2100, 900)] * 3 + [np.full((2100, 900), 200, np.uint8)]), "PNG"),
     (1050, 450)),  # RGBA PNG
    (lambda: make_dicom(ramp(3000, 3000, np.uint16, 4000), bits=12, RescaleSlope=1, RescaleIntercept=-1024,
                        WindowCenter=1000, WindowWidth=3000), (1500, 1500)),
])
def test_large_images_are_reduced_right_after_decoding(make, shape):
    """Fails on ecfa98d: these were returned at full size."""
    img, meta = read_image(make())
    assert img.shape == shape and img.dtype == np.float32
    assert f"reduced to {shape[1]} x {shape[0]} pixels on reading" in meta.notes


def test_reduced_dicom_matches_the_reduced_pixels():
    """The box reduce happens before the LUTs: a linear window of the reduced pixels, nothing lost but detail."""
    pixels = np.random.default_rng(1).integers(0, 4000, (2400, 2200)).astype(np.uint16)
    img, _ = read_image(make_dicom(pixels, bits=12))
    small, _ = read_image(make_dicom(shrink.reduce_array(pixels, 2), bits=12))
    np.testing.assert_allclose(img, small, atol=1e-6)


@pytest.mark.slow
def test_rle_dicom_is_reduced():
    ds = pydicom.dcmread(io.BytesIO(make_dicom(ramp(2500, 2100, np.uint16, 4000), bits=12)))
    ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    img, _ = read_image(buf.getvalue())
    assert img.shape == (1250, 1050)


def test_training_and_prediction_see_the_same_reduced_pixels():
    data = encode(ramp(2500, 2500, np.uint16, 60000))
    from cxrdemo.model.checkpoint import Preprocessing

    img, _ = read_image(data)
    tensor = Preprocessing(64).prepare(img)  # what prediction feeds the network (the cache: test_data)
    assert img.shape == (1250, 1250) and tuple(tensor.shape) == (1, 64, 64)


@pytest.mark.parametrize("w, h", [(50_000_000, 1), (1, 40_000), (2100, 100)])
def test_absurd_aspect_ratio_is_refused_from_the_header(w, h):
    """Fails on ecfa98d: a 50,000,000 x 1 PNG was accepted (and failed later inside st.image)."""
    with pytest.raises(ImageReadError, match="more than 20 times the other"):
        read_image(png_with_header(w, h))


def test_a_long_but_plausible_image_is_read():
    img, _ = read_image(encode(ramp(100, 2000)))
    assert img.shape == (100, 2000)


def test_display_copy_is_at_most_1024_px():
    img = np.random.default_rng(0).random((2048, 1500), dtype=np.float32)
    small = shrink.display_copy(img)
    assert small.shape == (1024, 750) and small.dtype == np.float32
    rgb = np.zeros((1500, 900, 3), np.uint8)
    assert shrink.display_copy(rgb).shape == (750, 450, 3)
    tiny = np.zeros((300, 200), np.float32)
    assert shrink.display_copy(tiny) is tiny


# ---- dataset memory estimate ------------------------------------------------------------------------------

def test_dataset_memory_estimate_counts_every_copy():
    from cxrdemo.data import cache

    assert cache.estimate_memory(1000, 224) == 1000 * 224 * 224 * 2 + cache.DECODE_RESERVE
    assert cache.estimate_memory(10, 100, channels=3) == 10 * 100 * 100 * 3 * 2 + cache.DECODE_RESERVE


def test_dataset_that_cannot_fit_is_refused_before_decoding(tiny_dataset, tmp_path, monkeypatch):
    """Fails on ecfa98d: the loader decoded until the OOM killer stopped it (here: it loaded regardless)."""
    from cxrdemo import data
    from cxrdemo.errors import DatasetError

    monkeypatch.setenv("CXRDEMO_CACHE_DIR", str(tmp_path / "cache"))
    data.cache._MEMO.clear()
    items = data.scan_dataset(tiny_dataset).splits["train"]
    decoded = []
    monkeypatch.setattr(data.cache, "read_image", lambda *a: decoded.append(a) or read_image(*a))
    monkeypatch.setenv("CXRDEMO_MEMORY_AVAILABLE_MB", "100")
    with pytest.raises(DatasetError, match=r"needs about 0\.3 GB of memory, but only 0\.1 GB is free"):
        data.load_images(items, 224)
    assert not decoded
    monkeypatch.setenv("CXRDEMO_MEMORY_AVAILABLE_MB", "4096")
    assert len(data.load_images(items, 32).labels) == len(items) and decoded


def test_available_memory_reads_meminfo(monkeypatch):
    from cxrdemo.data import cache

    monkeypatch.delenv("CXRDEMO_MEMORY_AVAILABLE_MB", raising=False)
    have = cache.available_memory()
    assert have is None or 0 < have < 2**50
