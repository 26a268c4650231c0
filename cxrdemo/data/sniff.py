"""Tell what a file is from its first bytes: an image kind this app reads, or a sentence saying what it is instead.

Torch-free and decoder-free, so the dataset scan can sniff thousands of files quickly.
"""

from __future__ import annotations

from cxrdemo.errors import ImageReadError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
HEADER_BYTES = 512  # enough to sniff every signature below (DICOM's "DICM" sits at byte 128)

_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
    (b"BM", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"II+\x00", "tiff"), (b"MM\x00+", "tiff"),
    (b"P5", "ppm"), (b"P6", "ppm"),
)
_OTHER_MAGIC = (
    (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive or an Office document"),
    (b"\xd0\xcf\x11\xe0", "an Office document"), (b"\x1f\x8b", "a compressed (gzip) file"),
    (b"{\\rtf", "a text document"), (b"Rar!", "a RAR archive"), (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"8BPS", "a Photoshop document"), (b"%!PS", "a PostScript document"), (b"ID3", "an audio file"),
    (b"OggS", "an audio or video file"), (b"\x00\x00\x01\x00", "an icon file"),
)


def sniff(header: bytes, suffix: str = "") -> str:
    """The image kind a file's first bytes announce ('png', 'jpeg', 'dicom'...), else ImageReadError saying what."""
    if not header:
        raise ImageReadError("The file is empty (0 bytes).")
    if header[128:132] == b"DICM":
        return "dicom"
    for magic, kind in _IMAGE_MAGIC:
        if header.startswith(magic):
            return kind
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "webp"
    if suffix.lower() in DICOM_SUFFIXES:
        return "dicom"  # DICOM without the 128-byte preamble: only the name tells
    for magic, what in _OTHER_MAGIC:
        if header.startswith(magic):
            raise ImageReadError(f"This file is not an image (it looks like {what}).")
    if header[4:8] == b"ftyp":
        what = "an HEIC photo; export it as JPEG or PNG" if header[8:12] in (b"heic", b"heix", b"mif1") else "a video"
        raise ImageReadError(f"This file is not an image this app can read (it looks like {what}).")
    text = header.lstrip()[:64].lower()
    if text.startswith((b"<svg", b"<?xml")):
        raise ImageReadError("This file is not an image this app can read (it looks like an SVG drawing or XML).")
    if text.startswith((b"<!doctype html", b"<html")):
        raise ImageReadError("This file is not an image (it looks like a web page).")
    if _looks_like_text(header):
        raise ImageReadError("This file is not an image (it looks like a text file).")
    raise ImageReadError("This file is not an image this app can read. Use PNG, JPEG or DICOM.")


def _looks_like_text(header: bytes) -> bool:
    try:
        decoded = header.decode("utf-8", errors="strict")
    except UnicodeDecodeError as err:
        if err.start < len(header) - 4:  # a multi-byte character cut at the end is still text
            return False
        decoded = header[: err.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in decoded)
    return bool(decoded) and printable >= 0.95 * len(decoded)

