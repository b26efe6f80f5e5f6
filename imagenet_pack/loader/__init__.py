"""Batching: a deterministic resumable sampler, shared-memory batch buffers, and the loader that ties them.

Read in this order: ``sampler`` (:class:`EpochSampler`), ``loader`` (:func:`epoch_loader`,
:class:`EpochLoader`, the :class:`Feed` protocol a look-ahead uses), ``ring`` (:class:`BatchRing`, the
workers' shared-memory batches, and the :class:`BatchSource` protocol it needs of a dataset). The device side
(``imagenet_pack.gpu``) builds on this; nothing here imports it.
"""
from __future__ import annotations

from .loader import EpochLoader, Feed, collate_uint8, epoch_loader
from .ring import BatchRing, BatchSource
from .sampler import EpochSampler

__all__ = ["EpochSampler", "EpochLoader", "Feed", "epoch_loader", "collate_uint8", "BatchRing", "BatchSource"]
