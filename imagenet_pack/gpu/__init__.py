"""The device side: batches made ahead of compute on a stream of their own, normalised on the device, and
decoded there in part (the hybrid feed) or whole (GPU decode mode).

Read in this order: ``device`` (which device, CUDA or not, streams, events, pinned memory: the one place that
asks), ``stage`` (the look-ahead: a thread, two streams, events), ``prefetch`` (:class:`CudaPrefetcher`),
``normalize``, ``resample`` (many crops to one batch in a fixed number of operations), ``decode``
(:class:`GpuBatchDecoder`: staged records to samples), ``staging`` (pinned host buffers, reused), ``share``
(how much of each batch the device decodes), ``hybrid`` (:class:`HybridLoader`: the merge).
"""
from __future__ import annotations

from .normalize import IMAGENET_MEAN, IMAGENET_STD, normalize
from .prefetch import CudaPrefetcher

__all__ = ["CudaPrefetcher", "normalize", "IMAGENET_MEAN", "IMAGENET_STD"]
