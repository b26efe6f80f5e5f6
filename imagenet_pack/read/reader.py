"""Opening databases for reading: shard discovery, per-process environments, split metadata.

LMDB forbids using an environment after fork (py-lmdb's docs, "Forking & multiprocessing"). So environments
live in a per-process cache keyed by the resolved path: every dataset instance in a process shares one handle,
a forked child that finds its parent's handle closes it (py-lmdb skips the LMDB cleanup in a child) and
opens its own, and nothing LMDB-related is ever pickled. Readers open with ``readonly=True, lock=False`` (an immutable database needs no
reader table, so no MDB_READERS_FULL) and ``readahead=False`` (random access to a database larger than RAM).

The per-record arrays (targets, sizes) are read-only memory maps of the very bytes LMDB stores them in
(``numpy.memmap`` of data.mdb at the value's offset): every process of a node reads the same page-cache
pages, no process holds a private copy, and the maps live on their own, whatever happens to the LMDB handle
(closed, or inherited across fork).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lmdb
import numpy as np

from ..errors import CorruptRecordError, FormatError
from ..format import (CHECKSUMS_KEY, LENGTH_KEY, META_DB, META_KEY, PATHS_KEY, RECORDS_DB, SIZES_KEY, TAILS_DB,
                      TARGETS_KEY, Record, ShardMeta, check_checksum, decode_array, decode_length, decode_paths,
                      decode_record)
from .lmdbfile import check_file_size, file_offset

SHARD_GLOB = "shard-*-of-*"


def shard_dir(split_dir: Path, shard: int, num_shards: int) -> Path:
    """A one-shard split is a plain LMDB directory; K shards are ``shard-SSS-of-KKK`` folders inside it."""
    return split_dir if num_shards == 1 else split_dir / f"shard-{shard:03d}-of-{num_shards:03d}"


def find_shards(split_dir: Path) -> list[Path]:
    if (split_dir / "data.mdb").is_file():
        return [split_dir]
    return sorted(p for p in split_dir.glob(SHARD_GLOB) if (p / "data.mdb").is_file())


class Handle(NamedTuple):
    """An open environment, its three named databases, and a read transaction kept for in-place arrays."""

    env: lmdb.Environment
    records: Any
    tails: Any
    meta: Any

    def read(self, key: bytes, where: str) -> Record | None:
        """The checked record under ``key`` (None if absent), tail included."""
        try:
            with self.env.begin(db=self.records, buffers=True) as txn:
                value = txn.get(key)
                return None if value is None else self.decode(txn, key, value, where)
        except lmdb.Error as exc:  # a damaged page: LMDB's own check, in the package's words
            raise CorruptRecordError(f"{where}: LMDB cannot read it ({exc}); the shard is damaged, "
                                     "run `imagenet-pack verify` and reconvert") from exc

    def decode(self, txn: lmdb.Transaction, key: bytes, value: bytes, where: str) -> Record:
        """Check and decode ``value`` read under ``key`` in ``txn``, fetching its tail if it has one.
        The image is copied out of the map, so the record outlives the transaction."""
        return decode_record(value, where, lambda: txn.get(key, db=self.tails))


_HANDLES: dict[str, tuple[int, Handle]] = {}
_RESOLVED: dict[str, str] = {}  # path as spelled -> resolved

def _resolved(path: Path | str) -> str:
    """``path`` with links resolved, remembered per spelling (this runs for every record read)."""
    spelled = os.fspath(path)
    key = _RESOLVED.get(spelled)
    if key is None:
        key = _RESOLVED[spelled] = os.path.realpath(spelled)
    return key


def open_handle(path: Path | str) -> Handle:
    """This process's read-only handle on the shard at ``path``, opened on first use (fork- and spawn-safe)."""
    key = _resolved(path)  # "db" and "/abs/db" are one environment, which LMDB opens once per process
    cached = _HANDLES.get(key)
    if cached is not None:
        if cached[0] == os.getpid():
            return cached[1]
        cached[1].env.close()  # inherited across fork: LMDB forbids using it; py-lmdb skips the cleanup in a child
        del _HANDLES[key]
    check_file_size(key)
    try:
        env = lmdb.open(key, readonly=True, lock=False, readahead=False, max_dbs=3, subdir=True)
    except lmdb.Error as exc:
        raise FormatError(f"{key}: cannot open as an LMDB database ({exc})") from exc
    try:
        handle = Handle(env, env.open_db(RECORDS_DB, create=False), env.open_db(TAILS_DB, create=False),
                        env.open_db(META_DB, create=False))
    except lmdb.NotFoundError as exc:
        env.close()
        raise FormatError(f"{key}: not an imagenet_pack database (no records/meta tables)") from exc
    _HANDLES[key] = (os.getpid(), handle)
    return handle


def close_handle(path: Path | str) -> None:
    """Close this process's handle on ``path``; the next access opens the database afresh."""
    _RESOLVED.pop(os.fspath(path), None)  # a path may be a link re-pointed since
    cached = _HANDLES.pop(os.path.realpath(path), None)
    if cached is not None and cached[0] == os.getpid():
        cached[1].env.close()


def shard_arrays(shard: Shard) -> tuple[np.ndarray, np.ndarray]:
    """The shard's targets (count,) and sizes (count, 2): read-only memory maps of the bytes LMDB stores them
    in (LMDB keeps a value contiguous in its file), so nothing is copied and every process shares the pages."""
    handle = open_handle(shard.path)
    data_file = os.path.realpath(os.path.join(shard.path, "data.mdb"))
    arrays = []
    try:
        with handle.env.begin(db=handle.meta, buffers=True) as txn:
            for key, dtype, count in ((TARGETS_KEY, shard.targets_dtype, shard.count),
                                      (SIZES_KEY, shard.sizes_dtype, 2 * shard.count)):
                view = decode_array(txn.get(key), dtype, count, str(shard.path), key.decode())  # checks length
                offset = file_offset(view.ctypes.data, data_file) if count else None
                arrays.append(np.array(view) if offset is None else np.memmap(data_file, dtype, "r", offset, (count,)))
    except lmdb.Error as exc:
        raise FormatError(f"{shard.path}: LMDB cannot read the metadata ({exc}); the shard is damaged, "
                          "reconvert it") from exc
    return arrays[0], arrays[1].reshape(-1, 2)


@dataclass(frozen=True)
class Shard:
    """Where one shard is and what a reader needs to view its arrays (small: it is pickled to workers)."""

    path: Path
    start: int  # global index of its first record
    count: int
    targets_dtype: str
    sizes_dtype: str


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


def _meta_values(path: Path, *keys: bytes) -> list[bytes | None]:
    """The values of ``keys`` in a shard's ``meta`` table (copied out), LMDB errors in the package's words."""
    handle = open_handle(path)
    try:
        with handle.env.begin(db=handle.meta) as txn:
            return [txn.get(key) for key in keys]
    except lmdb.Error as exc:
        raise FormatError(f"{path}: LMDB cannot read the metadata ({exc}); the shard is damaged, reconvert it") from exc


def read_paths(split_dir: Path) -> list[str]:
    """The source paths of every record of a split, in record order (checked against their checksum)."""
    out: list[str] = []
    for path in find_shards(split_dir):
        try:
            blob, checksums = _meta_values(path, PATHS_KEY, CHECKSUMS_KEY)
        finally:
            close_handle(path)
        if blob is None:
            raise FormatError(f"{path}: no paths key; the database is incomplete or damaged, reconvert it")
        check_checksum(checksums, "paths", blob, str(path))
        out.extend(decode_paths(blob))
    return out


def read_shard_meta(path: Path) -> ShardMeta:
    """The metadata of one complete shard; FormatError if it is missing, incomplete, damaged or of another
    version."""
    if not (path / "data.mdb").is_file():
        raise FormatError(f"{path}: no database here (no data.mdb); convert a dataset first")
    length, value, checksums = _meta_values(path, LENGTH_KEY, META_KEY, CHECKSUMS_KEY)
    if length is None or value is None:
        raise FormatError(
            f"{path}: incomplete database (no length key): its conversion did not finish; "
            "rerun the same `imagenet-pack convert` command to resume it"
        )
    meta = ShardMeta.from_msgpack(value, str(path))  # a version check first: older formats have no checksums
    check_checksum(checksums, "meta", value, str(path))
    if decode_length(length) != meta.count:
        raise FormatError(f"{path}: length key says {decode_length(length)} records, metadata {meta.count}")
    return meta


def load_split(root: Path | str, split: str) -> SplitInfo:
    """Read and cross-check the metadata of every shard of ``root/split``, map the per-record arrays and check
    them against their checksums (in place: nothing is copied); leaves no environment open. FormatError
    naming what is missing or wrong."""
    root = Path(root)
    split_dir = root / split
    if not root.is_dir():
        raise FormatError(f"{root}: no such database directory")
    if not split_dir.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FormatError(f"{root}: no split '{split}' in this database (splits present: {present})")
    paths = find_shards(split_dir)
    if not paths:
        raise FormatError(f"{split_dir}: no LMDB shard found (no data.mdb); convert the dataset first")
    if paths == [split_dir]:
        metas = [read_shard_meta(split_dir)]
    else:
        metas = _sharded_metas(split_dir, paths)
    shards, arrays, start = [], [], 0
    for path, meta in zip(paths, metas):
        if meta.split != split or meta.wnids != metas[0].wnids or meta.fingerprint != metas[0].fingerprint:
            raise FormatError(f"{path}: holds split {meta.split!r}, other classes or other input than shard 0; "
                              "the shards are from different conversions, reconvert")
        shard = Shard(path, start, meta.count, meta.targets_dtype, meta.sizes_dtype)
        targets, sizes = shard_arrays(shard)
        checksums = _meta_values(path, CHECKSUMS_KEY)[0]
        check_checksum(checksums, "targets", targets, str(path))
        check_checksum(checksums, "sizes", sizes, str(path))
        if meta.count and not 0 <= int(targets.min()) <= int(targets.max()) < len(meta.wnids):
            raise FormatError(f"{path}: metadata targets fall outside 0..{len(meta.wnids) - 1}")
        shards.append(shard)
        arrays.append((targets, sizes))
        start += meta.count
    for path in paths:  # the arrays are maps of their own: no environment needs to stay open
        close_handle(path)
    return SplitInfo(root, split, shards, metas, arrays)


def _sharded_metas(split_dir: Path, paths: list[Path]) -> list[ShardMeta]:
    """The metadata of every shard ``shard-SSS-of-KKK`` of a split, once all K are there and finished; else
    FormatError naming the missing and unfinished ones (several hosts may each write some)."""
    counts = {int(p.name.rsplit("-", 1)[1]) for p in paths}
    if len(counts) != 1:
        raise FormatError(f"{split_dir}: holds shards of conversions with different --shards {sorted(counts)}; "
                          "reconvert with --overwrite")
    num_shards, metas, unfinished = counts.pop(), {}, []
    for path in paths:
        try:
            meta = read_shard_meta(path)
        except FormatError as exc:
            if "incomplete" not in str(exc):
                raise
            unfinished.append(int(path.name.split("-")[1]))
            continue
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


def list_splits(root: Path | str) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise FormatError(f"{root}: no such database directory")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and find_shards(p))
