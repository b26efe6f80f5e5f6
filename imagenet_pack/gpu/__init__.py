"""The device side: uint8 batches normalised on the GPU, copied ahead of compute; decoding on the GPU.

Read in this order: ``prefetch`` (:func:`normalize`, :class:`CudaPrefetcher`), ``decode`` (the GPU decode
mode: JPEG bytes and crop boxes from the workers, decoded and cropped on the device).
"""
from __future__ import annotations

from .prefetch import IMAGENET_MEAN, IMAGENET_STD, CudaPrefetcher, normalize

__all__ = ["CudaPrefetcher", "normalize", "IMAGENET_MEAN", "IMAGENET_STD"]
