"""Batching: a deterministic resumable sampler, shared-memory batch buffers, and the loader that ties them.
The device side (``imagenet_pack.gpu``) builds on this; nothing here imports it. Its modules are mapped in
docs/DESIGN.md."""

from __future__ import annotations

from .loader import EpochLoader, Feed, collate_uint8, epoch_loader
from .ring import BatchRing, BatchSource
from .sampler import EpochSampler

__all__ = ["EpochSampler", "EpochLoader", "Feed", "epoch_loader", "collate_uint8", "BatchRing", "BatchSource"]
