"""Data: scan, image reading (PNG/JPEG/DICOM), decode-once cache, augmentation. Imports only the ground floor."""
