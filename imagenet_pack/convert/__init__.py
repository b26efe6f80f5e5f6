"""Writing: source splits into LMDB shards, in parallel, resumable after a kill, with an honest report.

Read in this order: ``converter`` (orchestration: :func:`convert`, :class:`ConvertOptions`), ``tasks`` (what a
worker does with one file), ``prepare`` and ``probe`` (validation and the re-encoding policy), ``writer``
(one shard: batched commits, map growth, resumable state), ``report`` (the per-split report, JSONL, audit).
Torch-free: ``imagenet-pack convert`` starts in a fraction of a second.
"""
from __future__ import annotations

from .converter import ConvertOptions, convert
from .report import ConvertReport, SplitReport

__all__ = ["convert", "ConvertOptions", "ConvertReport", "SplitReport"]
