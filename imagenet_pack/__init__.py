"""imagenet_pack: pack ILSVRC2012 into LMDB once, feed it to PyTorch fast.

The package is two wings around one contract: ``sources`` and ``convert`` write databases, ``read``,
``loader`` and ``gpu`` read them, and ``format`` (specified in docs/FORMAT.md), ``layout`` (where each piece
is), ``lmdbfile`` (the fences around LMDB's file) and ``codec`` (the decode policy) are what both share;
``bench`` measures. Every public name is importable from here, and imported on first use: importing the
package costs nothing, torch is imported only by the reading names, so ``imagenet-pack convert`` starts in a
fraction of a second (and a Ctrl-C at any moment meets the command's own handler).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import convert as _writing  # noqa: F401 - the subpackage first, so the name below is the function
from .errors import (BusyError, CorruptRecordError, DecodeError, DecoderUnavailableError, FormatError,
                     ImagenetPackError, IncompleteShardError, LayoutError, OutputExistsError, UnsafeOutputError)

__version__ = "0.2.0"

# name -> module, imported on first use (the reading ones import torch)
_LAZY = {
    "ConvertOptions": "convert.converter",
    "ConvertReport": "convert.report",
    "verify": "verification",
    "VerifyReport": "verification",
    "LmdbImageNet": "read.dataset",
    "RandomResizedCropDecoder": "read.decoders",
    "CenterCropDecoder": "read.decoders",
    "build_loader": "loading",
    "EpochLoader": "loader.loader",
    "EpochSampler": "loader.sampler",
    "BatchRing": "loader.ring",
    "CudaPrefetcher": "gpu.prefetch",
    "normalize": "gpu.normalize",
    "GpuBatchDecoder": "gpu.decode",
    "HybridLoader": "gpu.hybrid",
}

__all__ = [
    "convert", *_LAZY,
    "ImagenetPackError", "LayoutError", "FormatError", "IncompleteShardError", "CorruptRecordError", "DecodeError",
    "DecoderUnavailableError", "OutputExistsError", "BusyError", "UnsafeOutputError",
]

if TYPE_CHECKING:
    from .convert.converter import ConvertOptions
    from .convert.report import ConvertReport
    from .verification import VerifyReport, verify
    from .gpu.decode import GpuBatchDecoder
    from .gpu.hybrid import HybridLoader
    from .gpu.normalize import normalize
    from .gpu.prefetch import CudaPrefetcher
    from .loader.loader import EpochLoader
    from .loader.ring import BatchRing
    from .loader.sampler import EpochSampler
    from .loading import build_loader
    from .read.dataset import LmdbImageNet
    from .read.decoders import CenterCropDecoder, RandomResizedCropDecoder


def convert(src, dst, options=None, *, echo=None):
    """Convert an ImageNet input into databases: :func:`imagenet_pack.convert.converter.convert` (the
    subpackage ``imagenet_pack.convert`` holds the writing wing; this name is its entry point)."""
    from .convert.converter import ConvertOptions, convert as run
    return run(src, dst, options if options is not None else ConvertOptions(), echo=echo)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
