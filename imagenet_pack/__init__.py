"""imagenet_pack: pack ILSVRC2012 into LMDB once, feed it to PyTorch fast.

Every public name (what a user calls or receives: ``build_loader`` returns a ``Feed``, a dataset's
``read_record`` a ``Record``) is importable from here, and imported on first use: importing the package costs
nothing, torch is imported only by the reading names, so ``imagenet-pack convert`` starts in a fraction of a
second (and a Ctrl-C at any moment meets the command's own handler). How the package is built, and the map of
its modules: docs/DESIGN.md."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import (
    BusyError,
    CorruptRecordError,
    DecodeError,
    DecoderUnavailableError,
    FormatError,
    ImagenetPackError,
    IncompleteShardError,
    LayoutError,
    OutputExistsError,
    UnsafeOutputError,
)

__version__ = "0.2.0"

# name -> module, imported on first use (the reading ones import torch)
_LAZY = {
    "convert": "write.converter",
    "ConvertOptions": "write.options",
    "ConvertReport": "write.report",
    "verify": "verification",
    "VerifyReport": "verification",
    "LmdbImageNet": "read.dataset",
    "RandomResizedCropDecoder": "read.decoders",
    "CenterCropDecoder": "read.decoders",
    "build_loader": "feeds",
    "Feed": "loader.loader",
    "Record": "contract.format",
    "EpochSampler": "loader.sampler",
    "CudaPrefetcher": "gpu.prefetch",
    "normalize": "gpu.normalize",
}

__all__ = [
    "convert", "ConvertOptions", "ConvertReport", "verify", "VerifyReport", "LmdbImageNet", "RandomResizedCropDecoder",
    "CenterCropDecoder", "build_loader", "Feed", "Record", "EpochSampler", "CudaPrefetcher", "normalize",
    "ImagenetPackError", "LayoutError", "FormatError", "IncompleteShardError", "CorruptRecordError", "DecodeError",
    "DecoderUnavailableError", "OutputExistsError", "BusyError", "UnsafeOutputError",
]

if TYPE_CHECKING:
    from .contract.format import Record
    from .feeds import build_loader
    from .gpu.normalize import normalize
    from .gpu.prefetch import CudaPrefetcher
    from .loader.loader import Feed
    from .loader.sampler import EpochSampler
    from .read.dataset import LmdbImageNet
    from .read.decoders import CenterCropDecoder, RandomResizedCropDecoder
    from .verification import VerifyReport, verify
    from .write.converter import convert
    from .write.options import ConvertOptions
    from .write.report import ConvertReport


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
