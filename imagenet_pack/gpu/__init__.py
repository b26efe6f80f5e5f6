"""The device side: batches made ahead of compute on a stream of their own, normalised on the device, and
decoded there in part (the hybrid feed) or whole (GPU decode mode).

Read in this order: ``stage`` (the look-ahead: a thread and a stream, events, :func:`resolve_device`),
``prefetch`` (:class:`CudaPrefetcher`), ``normalize``, ``decode`` (:class:`GpuBatchDecoder`), ``hybrid``
(:class:`HybridLoader`: the batch split, the merge, the share).
"""
from __future__ import annotations

from .normalize import IMAGENET_MEAN, IMAGENET_STD, normalize
from .prefetch import CudaPrefetcher

__all__ = ["CudaPrefetcher", "normalize", "IMAGENET_MEAN", "IMAGENET_STD"]
