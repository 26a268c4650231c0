"""The project's own error types: each carries a sentence a clinician can act on."""


class CxrError(Exception):
    """Base class: its message is shown to the user as is (no traceback)."""


class ConfigError(CxrError, ValueError):
    """A training option or CLI argument is invalid."""


class DatasetError(CxrError):
    """A dataset folder cannot be used for training or evaluation."""


class ImageReadError(CxrError):
    """A file cannot be read as a radiograph."""


class WeightsUnavailable(CxrError):
    """Pretrained weights are not on this machine and cannot be downloaded."""


class RunError(CxrError):
    """A run is missing, damaged, unfinished or unsafe to address."""


class Cancelled(CxrError):
    """Training stopped because the user cancelled it."""
