"""Opening databases for reading: records, the split's metadata and arrays.

A finished shard never changes, so it is read without LMDB's machinery (no environment, no reader table, no
transactions): through :class:`imagenet_pack.lmdbfile.LmdbFile`, a read-only map of data.mdb that checks
every page and value against the file before following it, so a damaged page is an error, never a signal.
Each process keeps one view per shard (:func:`imagenet_pack.layout.shard_file`): every dataset instance
shares it, forked and spawned workers make their own on first use, and nothing of it is ever pickled.

The per-record arrays (targets, sizes) are read-only memory maps of the very bytes LMDB stores them in
(``numpy.memmap`` of data.mdb at the value's offset): every process of a node reads the same page-cache
pages, no process holds a private copy, and the maps live on their own, whatever happens to the LMDB handle.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import FormatError, IncompleteShardError
from ..format import (CHECKSUMS_KEY, META_DB, PATHS_KEY, RECORDS_DB, SIZES_KEY, TAILS_DB, TARGETS_KEY, Record,
                      ShardMeta, check_checksum, decode_paths, decode_record)
from ..layout import close_shard, find_shards, meta_values, read_shard_meta, shard_file, shard_of
from ..lmdbfile import LmdbFile


class Handle(NamedTuple):
    """One shard's view, for reading records."""

    file: LmdbFile

    def read(self, key: bytes, where: str) -> Record | None:
        """The checked record under ``key`` (None if absent), tail included, copied out of the map."""
        value = self.file.get(RECORDS_DB, key, where)
        if value is None:
            return None
        return decode_record(value, where, lambda: self.file.get(TAILS_DB, key, f"{where} tail"))


_HANDLES: dict[str, Handle] = {}  # path as spelled -> this process's handle


def open_handle(path: Path | str) -> Handle:
    """This process's handle on the finished shard at ``path``, made on first use (fork- and spawn-safe)."""
    spelled = os.fspath(path)
    handle = _HANDLES.get(spelled)
    if handle is None or handle.file is not shard_file(spelled):  # made anew when the file was replaced
        handle = _HANDLES[spelled] = Handle(shard_file(spelled))
    return handle


def close_handle(path: Path | str) -> None:
    """Drop this process's handle on ``path``; the next access opens the shard afresh."""
    _HANDLES.pop(os.fspath(path), None)
    close_shard(path)


@dataclass(frozen=True)
class Shard:
    """Where one shard is and what a reader needs to view its arrays (small: it is pickled to workers)."""

    path: Path
    start: int  # global index of its first record
    count: int
    targets_dtype: str
    sizes_dtype: str


def shard_arrays(shard: Shard) -> tuple[np.ndarray, np.ndarray]:
    """The shard's targets (count,) and sizes (count, 2): read-only memory maps of the bytes LMDB stores them
    in (LMDB keeps a value contiguous in its file), so nothing is copied and every process shares the pages."""
    file = open_handle(shard.path).file
    arrays = []
    for key, dtype, count in ((TARGETS_KEY, shard.targets_dtype, shard.count),
                              (SIZES_KEY, shard.sizes_dtype, 2 * shard.count)):
        where = f"{shard.path} {key.decode()}"
        found = file.locate(META_DB, key, where)
        if found is None:
            raise FormatError(f"{shard.path}: no {key.decode()!r} key; the database is damaged, reconvert it")
        if found[1] != count * np.dtype(dtype).itemsize:
            raise FormatError(f"{shard.path}: {key.decode()!r} holds {found[1]} bytes, expected {count} values of "
                              f"{dtype}; the database is damaged, reconvert it")
        arrays.append(np.memmap(file.path, dtype, "r", found[0], (count,)) if count else np.zeros(0, dtype))
    return arrays[0], arrays[1].reshape(-1, 2)


@dataclass
class SplitInfo:
    """Everything a reader needs about one split, read from the shards' metadata."""

    root: Path
    split: str
    shards: list[Shard]
    metas: list[ShardMeta]
    arrays: list[tuple[np.ndarray, np.ndarray]]  # (targets, sizes) per shard, mapped in place

    @property
    def wnids(self) -> list[str]:
        return list(self.metas[0].wnids)

    @property
    def classes(self) -> list[tuple[str, ...]]:
        return list(self.metas[0].classes)

    def __len__(self) -> int:
        return sum(m.count for m in self.metas)


def read_paths(shard_path: Path) -> list[str]:
    """The source paths of every record of one shard, in record order (checked against their checksum)."""
    blob, checksums = meta_values(shard_path, PATHS_KEY, CHECKSUMS_KEY)
    if blob is None:
        raise FormatError(f"{shard_path}: no paths key; the database is damaged, reconvert it")
    check_checksum(checksums, "paths", blob, str(shard_path))
    return decode_paths(blob)


def load_split(root: Path | str, split: str) -> SplitInfo:
    """Read and cross-check the metadata of every shard of ``root/split``, map the per-record arrays and check
    them against their checksums (in place: nothing is copied); leaves no environment open. FormatError
    naming what is missing or wrong."""
    root = Path(root)
    split_dir = root / split
    check_root(root)
    if not split_dir.is_dir():
        raise FormatError(f"{root}: no split '{split}' in this database (splits present: {list_splits(root)})")
    paths = find_shards(split_dir)
    if not paths:
        raise FormatError(f"{split_dir}: no LMDB shard found (no data.mdb); convert the dataset first")
    metas = [read_shard_meta(split_dir)] if paths == [split_dir] else _sharded_metas(split_dir, paths)
    shards, arrays, start = [], [], 0
    for path, meta in zip(paths, metas):
        if meta.split != split or meta.wnids != metas[0].wnids or meta.fingerprint != metas[0].fingerprint:
            raise FormatError(f"{path}: holds split {meta.split!r}, other classes or other input than shard 0; "
                              "the shards are from different conversions, reconvert")
        shard = Shard(path, start, meta.count, meta.targets_dtype, meta.sizes_dtype)
        targets, sizes = shard_arrays(shard)
        checksums = meta_values(path, CHECKSUMS_KEY)[0]
        check_checksum(checksums, "targets", targets, str(path))
        check_checksum(checksums, "sizes", sizes, str(path))
        if meta.count and not 0 <= int(targets.min()) <= int(targets.max()) < len(meta.wnids):
            raise FormatError(f"{path}: metadata targets fall outside 0..{len(meta.wnids) - 1}; reconvert it")
        if meta.count and int(sizes.min()) < 1:
            raise FormatError(f"{path}: metadata sizes hold an empty image size; reconvert it")
        shards.append(shard)
        arrays.append((targets, sizes))
        start += meta.count
    return SplitInfo(root, split, shards, metas, arrays)


def _sharded_metas(split_dir: Path, paths: list[Path]) -> list[ShardMeta]:
    """The metadata of every shard ``shard-SSS-of-KKK`` of a split, once all K are there and finished; else
    FormatError naming the missing and unfinished ones (several hosts may each write some)."""
    counts = {shard_of(p)[1] for p in paths}
    if len(counts) != 1:
        raise FormatError(f"{split_dir}: holds shards of conversions with different --shards {sorted(counts)}; "
                          "reconvert with --overwrite")
    num_shards, metas, unfinished = counts.pop(), {}, []
    for path in paths:
        try:
            meta = read_shard_meta(path)
        except IncompleteShardError:
            unfinished.append(shard_of(path)[0])
            continue
        if (meta.shard, meta.num_shards) != shard_of(path):
            raise FormatError(f"{path}: its metadata says shard {meta.shard} of {meta.num_shards}; reconvert it")
        metas[meta.shard] = meta
    missing = sorted(set(range(num_shards)) - set(metas))
    if missing:
        unfinished_note = f" ({', '.join(map(str, unfinished))} incomplete)" if unfinished else ""
        raise FormatError(
            f"{split_dir}: shard(s) {', '.join(map(str, missing))} of {num_shards} are missing or unfinished"
            f"{unfinished_note}; finish them with `imagenet-pack convert SRC DST --shards {num_shards} "
            f"--only-shards {','.join(map(str, missing))}` (or the same command without --only-shards)")
    return [metas[s] for s in range(num_shards)]


def finished_shards(split_dir: Path) -> list[tuple[Shard, ShardMeta]]:
    """Every finished shard of a split, alone (for checking a database whose other shards are not done):
    ``start`` counts only the finished shards before it."""
    out, start = [], 0
    for path in find_shards(split_dir):
        try:
            meta = read_shard_meta(path)
        except FormatError:
            continue
        out.append((Shard(path, start, meta.count, meta.targets_dtype, meta.sizes_dtype), meta))
        start += meta.count
    return out


def check_root(root: Path | str) -> Path:
    """``root`` as a Path, FormatError unless it is a folder (saying whether it is absent or a file)."""
    root = Path(root)
    if not root.is_dir():
        raise FormatError(f"{root}: " + ("not a folder: a database is a folder of splits" if root.exists()
                                         else "no such database directory"))
    return root


def list_splits(root: Path | str) -> list[str]:
    """The splits of the database at ``root`` (folders holding a shard)."""
    root = check_root(root)
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and find_shards(p))
    except OSError as exc:
        raise FormatError(f"{root}: cannot list it ({exc.strerror or exc})") from exc
