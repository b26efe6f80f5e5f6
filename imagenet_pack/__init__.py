"""imagenet_pack: pack ILSVRC2012 into LMDB once, feed it to PyTorch fast."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .convert import ConvertOptions, ConvertReport, convert
from .errors import (CorruptRecordError, DecodeError, FormatError, ImagenetPackError, LayoutError,
                     OutputExistsError)

__all__ = [
    "LmdbImageNet", "RandomResizedCropDecoder", "CenterCropDecoder", "convert", "ConvertOptions", "ConvertReport",
    "ImagenetPackError", "LayoutError", "FormatError", "CorruptRecordError", "DecodeError", "OutputExistsError",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .dataset import LmdbImageNet
    from .fused import CenterCropDecoder, RandomResizedCropDecoder


def __getattr__(name: str):
    # torch is imported only by what reads data, so `imagenet-pack convert` starts in a fraction of a second
    if name == "LmdbImageNet":
        from .dataset import LmdbImageNet
        return LmdbImageNet
    if name in ("RandomResizedCropDecoder", "CenterCropDecoder"):
        from . import fused
        return getattr(fused, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
