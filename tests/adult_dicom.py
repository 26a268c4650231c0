"""A synthetic adult-age chest DICOM for the tests: a built-in (paediatric) test film's pixels under a header that
says the patient is 55 (PatientAge "055Y"), a CR PA chest, with a name and an ID that must never be shown."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrdemo.paths import DEMO_DATA_DIR


def adult_dicom(age: str = "055Y") -> bytes:
    """The DICOM's bytes: 8-bit MONOCHROME2 pixels of the first built-in NORMAL test film, PatientAge `age`."""
    film = sorted((Path(DEMO_DATA_DIR) / "test" / "NORMAL").glob("*.jpg"))[0]
    pixels = np.asarray(Image.open(film).convert("L"), dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # computed radiography
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.PatientName, ds.PatientID, ds.PatientAge, ds.PatientSex = "Doe^Adult", "MRN-5550055", age, "M"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
