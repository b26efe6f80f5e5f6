"""imagenet_pack: pack ILSVRC2012 into LMDB once, feed it to PyTorch fast.

The package is two wings around one contract: ``sources`` and ``convert`` write databases, ``read``,
``loader`` and ``gpu`` read them, and ``format`` (specified in docs/FORMAT.md) is all they share. Every
public name is importable from here; torch is imported only when a reading name is first used, so
``imagenet-pack convert`` starts in a fraction of a second.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .convert import ConvertOptions, ConvertReport, convert
from .errors import (CorruptRecordError, DecodeError, DecoderUnavailableError, FormatError, ImagenetPackError,
                     LayoutError, OutputExistsError)
from .verify import VerifyReport, verify

__version__ = "0.1.0"

# name -> module, imported on first use (each of these imports torch)
_LAZY = {
    "LmdbImageNet": "read.dataset",
    "RandomResizedCropDecoder": "read.decoders",
    "CenterCropDecoder": "read.decoders",
    "build_loader": "loader.loader",
    "EpochLoader": "loader.loader",
    "EpochSampler": "loader.sampler",
    "CudaPrefetcher": "gpu.prefetch",
    "normalize": "gpu.prefetch",
}

__all__ = [
    "convert", "ConvertOptions", "ConvertReport", "verify", "VerifyReport", *_LAZY,
    "ImagenetPackError", "LayoutError", "FormatError", "CorruptRecordError", "DecodeError",
    "DecoderUnavailableError", "OutputExistsError",
]

if TYPE_CHECKING:
    from .gpu.prefetch import CudaPrefetcher, normalize
    from .loader.loader import EpochLoader, build_loader
    from .loader.sampler import EpochSampler
    from .read.dataset import LmdbImageNet
    from .read.decoders import CenterCropDecoder, RandomResizedCropDecoder


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
