"""``imagenet-pack info``: what a database holds, split by split, in words."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .contract.format import FORMAT_NAME, FORMAT_VERSION
from .errors import FormatError
from .read.reader import finished_shards, list_splits, load_split


def describe(root: Path) -> tuple[list[str], int]:
    """Lines describing the database at ``root`` and the exit status (1 if a split cannot be opened)."""
    splits = list_splits(root)
    if not splits:
        raise FormatError(f"{root}: no database found (no split folder holding an LMDB shard)")
    lines, status, class_lists = [], 0, {}
    for split in splits:
        try:
            info = load_split(root, split)
        except FormatError as exc:  # e.g. shards not written yet: say which are finished
            lines.append(f"{split}: {exc}")
            for shard, meta in finished_shards(root / split):
                lines.append(f"  {shard.path.name}: finished, {meta.count} records, created {meta.created}")
            status = 1
            continue
        meta = info.metas[0]
        class_lists[split] = info.wnids
        size = sum((s.path / "data.mdb").stat().st_size for s in info.shards)
        held = int(np.unique(np.concatenate([t for t, _ in info.arrays])).size) if len(info) else 0
        store = (f"shorter side <= {meta.short_side}, quality {meta.quality}" if meta.short_side else
                 f"longer side <= {meta.max_side}, quality {meta.quality}" if meta.max_side else "original bytes")
        lines.append(f"{split}: {len(info)} records of {held} of the database's {len(info.wnids)} classes, "
                     f"{len(info.shards)} shard(s), {size / 1e6:.1f} MB, format {FORMAT_NAME} v{FORMAT_VERSION}, "
                     f"created {meta.created}")
        lines.append(f"  source: {meta.source}; images: {store}; fixed on conversion: "
                     f"{sum(len(m.fixed) for m in info.metas)}; skipped: {sum(len(m.skipped) for m in info.metas)}")
        lines.append(f"  classes: {info.wnids[0]} ({info.classes[0][0]}) ... {info.wnids[-1]} ({info.classes[-1][0]})")
    if len({tuple(w) for w in class_lists.values()}) > 1:
        lines.append("warning: the splits have different class lists, so a target means another class in each; "
                     "reconvert them together (one convert of SRC holding every split)")
        status = 1
    return lines, status
