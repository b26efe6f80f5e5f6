"""imagenet_pack: pack ILSVRC2012 into LMDB once, feed it to PyTorch fast.

The package is two wings around one contract: ``sources`` and ``write`` make databases, ``read``,
``loader`` and ``gpu`` read them, and ``format`` (specified in docs/FORMAT.md), ``layout`` (where each piece
is), ``lmdbfile`` (the fences around LMDB's file) and ``codec`` (the decode policy) are what both share;
``bench`` measures. Every public name is importable from here, and imported on first use: importing the
package costs nothing, torch is imported only by the reading names, so ``imagenet-pack convert`` starts in a
fraction of a second (and a Ctrl-C at any moment meets the command's own handler).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import (BusyError, CorruptRecordError, DecodeError, DecoderUnavailableError, FormatError,
                     ImagenetPackError, IncompleteShardError, LayoutError, OutputExistsError, UnsafeOutputError)

__version__ = "0.2.0"

# name -> module, imported on first use (the reading ones import torch)
_LAZY = {
    "convert": "write.converter",
    "ConvertOptions": "write.converter",
    "ConvertReport": "write.report",
    "verify": "verification",
    "VerifyReport": "verification",
    "LmdbImageNet": "read.dataset",
    "RandomResizedCropDecoder": "read.decoders",
    "CenterCropDecoder": "read.decoders",
    "build_loader": "feeds",
    "EpochLoader": "loader.loader",
    "EpochSampler": "loader.sampler",
    "BatchRing": "loader.ring",
    "CudaPrefetcher": "gpu.prefetch",
    "normalize": "gpu.normalize",
    "GpuBatchDecoder": "gpu.decode",
    "HybridLoader": "gpu.hybrid",
}

__all__ = [
    *_LAZY,
    "ImagenetPackError", "LayoutError", "FormatError", "IncompleteShardError", "CorruptRecordError", "DecodeError",
    "DecoderUnavailableError", "OutputExistsError", "BusyError", "UnsafeOutputError",
]

if TYPE_CHECKING:
    from .write.converter import ConvertOptions, convert
    from .write.report import ConvertReport
    from .verification import VerifyReport, verify
    from .gpu.decode import GpuBatchDecoder
    from .gpu.hybrid import HybridLoader
    from .gpu.normalize import normalize
    from .gpu.prefetch import CudaPrefetcher
    from .loader.loader import EpochLoader
    from .loader.ring import BatchRing
    from .loader.sampler import EpochSampler
    from .feeds import build_loader
    from .read.dataset import LmdbImageNet
    from .read.decoders import CenterCropDecoder, RandomResizedCropDecoder


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
