"""Data: scan, image reading (PNG/JPEG/DICOM), decode-once cache, augmentation. Imports only the ground floor.

One door for the layers above (`from cxrdemo import data`): reading one file lives in `imageio` (`sniff` for
its first bytes), listing and splitting a dataset in `scan` (which folders it enters, `resolve_data_root` included, in
`fence`), the decode-once cache in `cache`, batches in `loader`, tensor augmentation in `augment`.
"""

from cxrdemo.data.augment import make_augment
from cxrdemo.data.cache import CachedImages, load_images
from cxrdemo.data.fence import resolve_data_root
from cxrdemo.data.imageio import (
    IMAGE_SUFFIXES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTENSITY_MODES,
    MAX_PIXELS,
    ImageMeta,
    adjust_intensity,
    normalize_batch,
    read_image,
    read_image_for_display,
    resize_to_uint8,
)
from cxrdemo.data.loader import class_weights, make_loader
from cxrdemo.data.scan import DatasetScan, patient_key, scan_dataset
from cxrdemo.data.sniff import sniff
from cxrdemo.data.window import StoredPixels
from cxrdemo.errors import ImageReadError

__all__ = [
    "IMAGE_SUFFIXES", "IMAGENET_MEAN", "IMAGENET_STD", "MAX_PIXELS", "ImageMeta", "ImageReadError", "read_image",
    "read_image_for_display", "StoredPixels",
    "resize_to_uint8", "adjust_intensity", "INTENSITY_MODES", "normalize_batch", "sniff",
    "DatasetScan", "resolve_data_root", "scan_dataset", "patient_key", "CachedImages", "load_images",
    "make_augment", "make_loader", "class_weights",
]
