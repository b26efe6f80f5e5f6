"""What an earlier run left in DST: complete shards to keep, interrupted ones to rewind to what changed.

Records are assigned to shards by source position (contiguous ranges), so every run, on any host, agrees on
which files belong to which shard.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from ..errors import FormatError, OutputExistsError
from ..read.reader import close_handle, find_shards, read_shard_meta
from ..sources.items import Item, SplitSource
from ..format import ShardMeta
from .report import SplitReport, audit
from .writer import ShardWriter


def shard_ranges(count: int, shards: int) -> list[range]:
    """The source positions of each shard: contiguous, in source order."""
    return [range(s * count // shards, (s + 1) * count // shards) for s in range(shards)]


def stamps_crc(items: list[Item]) -> int:
    """CRC-32 of the (size, mtime) of ``items``: stored per shard, so a changed source is noticed."""
    return zlib.crc32(np.array([i.stamp for i in items], "<i8").tobytes())


def complete(split_dir: Path, fingerprint: str, source: SplitSource, selected: tuple[int, ...]
             ) -> list[ShardMeta] | None:
    """The metadata of the ``selected`` shards of ``split_dir`` when all are complete for this input and these
    options (they are kept as they are), else None; OutputExistsError if they hold complete ones of other
    input or options, or of source files changed since."""
    metas = []
    paths = find_shards(split_dir)
    if not paths:
        return None
    try:
        for path in paths:
            try:
                metas.append(read_shard_meta(path))
            except FormatError:  # incomplete or unreadable shard: the writer decides what to do
                if _shard_number(path) in selected:
                    return None
    finally:
        for path in paths:
            close_handle(path)
    metas = [m for m in metas if m.shard in selected]
    if len(metas) != len(selected) or metas[0].num_shards < len(selected):
        return None
    if any(m.fingerprint != fingerprint for m in metas):
        raise OutputExistsError(
            f"{split_dir}: holds a complete database made from other input or options; "
            "pass --overwrite to replace it"
        )
    ranges = shard_ranges(len(source.items), metas[0].num_shards)
    changed = [m.shard for m in metas if m.stamps_crc32 != stamps_crc([source.items[i] for i in ranges[m.shard]])]
    if changed:
        raise OutputExistsError(f"{split_dir}: source files of shard(s) {changed} changed (size or mtime) since the "
                                "database was made; pass --overwrite to convert them again")
    return metas


def _shard_number(path: Path) -> int:
    """0 for a one-shard split, S for ``shard-SSS-of-KKK``."""
    return int(path.name.split("-")[1]) if path.name.startswith("shard-") else 0


def rewind_to_changes(writer: ShardWriter, source: SplitSource, rng: range) -> list[str]:
    """Rewind an interrupted shard to the first file that failed before (it may have been fixed) or changed
    since it was converted (its size or mtime differ from the scan's); say which files changed."""
    if writer.complete:
        return []
    changed = [row for row in writer.rows() if source.items[rng[row.position]].stamp != row[4:6]]
    first = min([p.position for p in writer.state.problems] + [r.position for r in changed], default=None)
    if first is None:
        return []
    writer.rewind(first)
    if not changed:
        return []
    names = ", ".join(source.items[rng[r.position]].path for r in changed[:10]) + (" ..." if len(changed) > 10 else "")
    return [f"{writer.path}: {len(changed)} file(s) changed since they were converted ({names}); converted "
            f"again from {source.items[rng[first]].path}"]


def summarise_complete(source: SplitSource, metas: list[ShardMeta]) -> SplitReport:
    """The report of a split whose shards were complete already: what their metadata (from :func:`complete`)
    says."""
    report = SplitReport(source.split, source.description, complete=True, already_complete=True,
                         ignored=list(source.ignored))
    report.stored = sum(m.count for m in metas)
    report.fixed = [f for m in metas for f in m.fixed]
    report.skipped = [f for m in metas for f in m.skipped]
    report.found = len(source.items) + len(source.ignored)
    report.warnings = audit(source)
    return report
