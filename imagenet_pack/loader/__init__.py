"""Batching: a deterministic resumable sampler, shared-memory batch buffers, and the loader that ties them.

Read in this order: ``sampler`` (:class:`EpochSampler`), ``loader`` (:func:`build_loader`,
:class:`EpochLoader`), ``ring`` (:class:`BatchRing`, the workers' shared-memory batches).
"""
from __future__ import annotations

from ..machine import default_workers
from .loader import EpochLoader, build_loader, collate_uint8
from .ring import BatchRing
from .sampler import EpochSampler

__all__ = ["EpochSampler", "EpochLoader", "build_loader", "collate_uint8", "BatchRing", "default_workers"]
