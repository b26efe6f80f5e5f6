"""Writing: source splits into LMDB shards, in parallel, resumable after a kill, with an honest report.

The pair of ``read``: ``imagenet_pack.convert`` is this wing's entry point. Read in this order: ``converter``
(:func:`convert`, :class:`ConvertOptions`: the run as a whole), ``split`` (one split: its shards' writers,
the items to convert, the final metadata; its worker processes are :mod:`imagenet_pack.pool`'s), ``tasks``
(what a worker does with one file), ``prepare`` (validation and the re-encoding policy; headers are read by
:mod:`imagenet_pack.probe`), ``writer`` and ``state`` (one shard: batched commits, map growth, resumable
state), ``resume`` (what an earlier run left), ``ownership`` (what may be written or removed in DST), ``lock``
(one writer per shard), ``report`` (the per-split report, JSONL, audit). Torch-free: ``imagenet-pack convert``
starts in a fraction of a second.
"""
from __future__ import annotations

import importlib

_LAZY = {"convert": "converter", "ConvertOptions": "converter", "ConvertReport": "report", "SplitReport": "report"}
__all__ = list(_LAZY)


def __getattr__(name: str):  # imported on first use, so importing the package costs nothing
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
