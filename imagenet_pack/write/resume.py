"""What an earlier run left in DST: complete shards to keep, and shards to convert again from what changed.

Records are assigned to shards by item (contiguous ranges of the split's source list), so every run, on any
host, agrees on which files belong to which shard. Every finished shard keeps the (size, mtime) of each
of its items as scanned (the ``stamps`` array), so a changed source file is found and named, whether the
shard is finished or not.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract.format import CHECKSUMS_KEY, STAMPS_DTYPE, STAMPS_KEY, ShardMeta, check_checksum, decode_array
from ..contract.layout import find_shards, shard_of
from ..contract.shardfiles import close_shard, meta_values, read_shard_meta
from ..errors import FormatError, OutputExistsError
from ..sources.items import MAX_FILE_BYTES, Item, SplitSource, read_item
from .state import Problem
from .tasks import content_digest
from .writer import ShardWriter


def shard_ranges(count: int, shards: int) -> list[range]:
    """The items of each shard: contiguous ranges of the source list, in order."""
    return [range(s * count // shards, (s + 1) * count // shards) for s in range(shards)]


def item_stamps(items: list[Item]) -> np.ndarray:
    """(size, mtime) of ``items`` as scanned, one row each: what a finished shard keeps."""
    return np.array([i.stamp for i in items], STAMPS_DTYPE).reshape(-1, 2)


def find_complete(split_dir: Path, fingerprint: str, source: SplitSource, selected: tuple[int, ...]
                  ) -> list[ShardMeta] | None:
    """The metadata of the ``selected`` shards of ``split_dir`` when all are complete for this input and these
    options (they are kept as they are, and nothing is written), else None. OutputExistsError if they are
    complete but of other input or options, or their source files changed since (named)."""
    found = []
    for path in find_shards(split_dir):
        if shard_of(path)[0] not in selected:
            continue
        try:
            found.append((path, read_shard_meta(path)))
        except FormatError:  # incomplete or unreadable shard: the writer decides what to do
            return None
        finally:
            close_shard(path)
    metas = [m for _, m in found]
    if not metas or len(metas) != len(selected) or any(m.num_shards != metas[0].num_shards for m in metas):
        return None
    if any(m.fingerprint != fingerprint for m in metas):
        raise OutputExistsError(f"{split_dir}: holds a complete database made from other input or options; "
                                "pass --overwrite to replace it")
    ranges = shard_ranges(len(source.items), metas[0].num_shards)
    changed = []
    for path, m in found:
        try:
            stamps, checksums = meta_values(path, STAMPS_KEY, CHECKSUMS_KEY)
        finally:
            close_shard(path)
        changed += changed_files(stamps, checksums, m, source, ranges[m.shard], path)
    made_from = {m.source for m in metas}
    if changed and made_from != {source.description}:
        raise OutputExistsError(f"{split_dir}: made from another source ({', '.join(sorted(made_from))}), not "
                                f"{source.description}; give that SRC to resume or check it, or pass --overwrite to "
                                "replace the database")
    if changed:
        raise OutputExistsError(f"{split_dir}: {len(changed)} source file(s) changed (size or mtime) since the "
                                f"database was made ({_names(changed)}); pass --overwrite to convert them again")
    return metas


def changed_files(value: bytes | None, checksums: bytes | None, meta: ShardMeta, source: SplitSource, rng: range,
                  path: Path) -> list[str]:
    """The source paths of the finished shard ``meta`` at ``path`` whose size or mtime differ from what its
    ``stamps`` value (and ``checksums``) keeps."""
    if value is None or meta.items != len(rng):
        return [source.items[i].path for i in rng]
    check_checksum(checksums, "stamps", value, str(path))
    kept = decode_array(value, STAMPS_DTYPE, 2 * meta.items, str(path), "stamps").reshape(-1, 2)
    now = item_stamps([source.items[i] for i in rng])
    return [source.items[rng[i]].path for i in np.flatnonzero((kept != now).any(axis=1))]


def rewind_to_changes(writer: ShardWriter, source: SplitSource, rng: range) -> list[str]:
    """Make ``writer``'s shard convert again what changed: an interrupted shard from the first file that
    changed since it was converted, or that failed before for a reason to try again (unreadable, out of memory)
    or whose bytes have changed since (it may have been fixed; the same bytes would fail the same way, so such
    a file stays failed and nothing after it is read again); a
    finished one (of a run not yet complete) from its start if any of its files changed. Says which."""
    if writer.finished is not None:
        stamps, checksums = writer.read_meta(STAMPS_KEY, CHECKSUMS_KEY)
        paths = changed_files(stamps, checksums, writer.finished, source, rng, writer.path)
        if paths:
            writer.restart()
            return [f"{writer.path}: {len(paths)} file(s) changed since this shard was finished "
                    f"({_names(paths)}); converting the shard again"]
        return []
    rows = writer.rows()
    changed = [row.item for row in rows if source.items[rng[row.item]].stamp != row.stamp]
    retried = [p.item for p in writer.state.problems
               if not p.digest or _content_changed(source.items[rng[p.item]], p)]
    first = min(changed + retried, default=None)
    if first is None:
        return []
    writer.rewind(first)
    notes = []
    if changed:
        notes.append(f"{writer.path}: {len(changed)} file(s) changed since they were converted "
                     f"({_names([source.items[rng[i]].path for i in changed])})")
    if retried:
        notes.append(f"{writer.path}: {len(retried)} file(s) that could not be stored changed since "
                     f"({_names([source.items[rng[i]].path for i in retried])}): reading them again")
    return notes + [f"{writer.path}: converting again from {source.items[rng[first]].path}"]


def _content_changed(item: Item, problem: Problem) -> bool:
    """Whether ``item``'s bytes are no longer those ``problem`` was a verdict on (read again: a file restored
    from a backup keeps its size and mtime); unreadable now counts as changed (it is tried, and said)."""
    try:
        data, _ = read_item(item, MAX_FILE_BYTES)
    except OSError:
        return True
    return content_digest(data) != problem.digest


def _names(paths: list[str]) -> str:
    return ", ".join(paths[:10]) + (" ..." if len(paths) > 10 else "")
