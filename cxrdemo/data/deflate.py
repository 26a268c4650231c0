"""Deflated DICOM ("Deflated Explicit VR Little Endian"): inflated here, with a hard limit on the bytes it unpacks to.

pydicom inflates such a file in one call with no limit before any size check can run: a 1 MB upload unpacks
to about 2 GB. Here the file meta group (uncompressed) is read first, the data set is inflated in chunks up to
MAX_INFLATED_BYTES, and pydicom then reads an ordinary Explicit VR Little Endian file whose header is checked
like any other.
"""

from __future__ import annotations

import io
import zlib
from typing import BinaryIO

from cxrdemo.errors import ImageReadError

DEFLATED = "1.2.840.10008.1.2.1.99"
MAX_INFLATED_BYTES = 160 * 2**20  # a 50-million-pixel 16-bit or 8-bit colour image and its header fit
_CHUNK = 1 << 20


def inflate_if_deflated(fp: BinaryIO) -> tuple[BinaryIO, bool]:
    """(fp rewound, False), or for a deflated DICOM (an in-memory inflated copy, True); ImageReadError past the limit."""
    from pydicom import uid
    from pydicom.filereader import (  # the parser dcmread itself uses
        _read_file_meta_info,
        read_preamble,
    )
    from pydicom.filewriter import write_file_meta_info

    start = fp.tell()
    read_preamble(fp, True)
    meta = _read_file_meta_info(fp)
    if str(meta.get("TransferSyntaxUID", "")).strip("\0 ") != DEFLATED:
        fp.seek(start)
        return fp, False
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=False)
    inflater, unpacked = zlib.decompressobj(-zlib.MAX_WBITS), 0
    try:
        while not inflater.eof and (chunk := fp.read(_CHUNK)):
            while chunk:
                piece = inflater.decompress(chunk, _CHUNK)  # at most _CHUNK bytes out per call
                unpacked += len(piece)
                if unpacked > MAX_INFLATED_BYTES:
                    raise ImageReadError(_too_big())
                out.write(piece)
                chunk = inflater.unconsumed_tail
        piece = inflater.flush()
    except zlib.error:
        raise ImageReadError("The compressed data of this DICOM file is damaged.") from None
    if unpacked + len(piece) > MAX_INFLATED_BYTES:
        raise ImageReadError(_too_big())
    out.write(piece)
    out.seek(0)
    return out, True


def _too_big() -> str:
    return (f"This compressed DICOM file unpacks to more than {MAX_INFLATED_BYTES // 2**20} MB, more than any "
            "radiograph this app reads: export the image uncompressed or as PNG.")
