"""cxrdemo: transfer learning on chest radiographs, for demos and teaching (not for clinical use)."""

from cxrdemo.errors import CxrError

__version__ = "0.1.0"
__all__ = ["CxrError", "__version__"]
