"""The device side: batches made ahead of compute on a stream of their own, normalised on the device, and
decoded there in part (the hybrid feed) or whole (GPU decode mode). Its modules are mapped in docs/DESIGN.md;
``device`` is the one module that asks what a device is."""

from __future__ import annotations

from .normalize import IMAGENET_MEAN, IMAGENET_STD, normalize
from .prefetch import CudaPrefetcher

__all__ = ["CudaPrefetcher", "normalize", "IMAGENET_MEAN", "IMAGENET_STD"]
