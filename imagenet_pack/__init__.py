"""imagenet_pack: pack ILSVRC2012 into LMDB once, feed it to PyTorch fast."""
from __future__ import annotations

from .convert import ConvertOptions, ConvertReport, convert
from .dataset import LmdbImageNet
from .errors import (CorruptRecordError, DecodeError, FormatError, ImagenetPackError, LayoutError,
                     OutputExistsError)

__all__ = [
    "LmdbImageNet", "convert", "ConvertOptions", "ConvertReport", "ImagenetPackError", "LayoutError",
    "FormatError", "CorruptRecordError", "DecodeError", "OutputExistsError",
]
__version__ = "0.1.0"
