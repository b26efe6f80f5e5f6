"""Opening databases for reading: records, the split's metadata and arrays.

A finished shard never changes, so it is read without LMDB's machinery (no environment, no reader table, no
transactions): through :class:`imagenet_pack.lmdbfile.LmdbFile`, which reads data.mdb with ``pread`` and
checks every page and value against the file before following it, so a damaged page is an error, never a
signal. Each process keeps one reader per shard (:func:`imagenet_pack.layout.shard_file`): every dataset
instance shares it, forked and spawned workers make their own on first use, and nothing of it is pickled.

A :class:`Shard` carries the identity (device, inode, size, modification time) of the data.mdb its metadata
was read from, and every read checks it: a database rewritten or replaced under an open dataset is an error
naming it, never old metadata paired with new records. The per-record arrays (targets, sizes) are read in
slices of what is asked, never held whole by a worker: its memory does not grow with the database.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract.format import (
    CHECKSUMS_KEY,
    META_DB,
    PATHS_KEY,
    RECORDS_DB,
    SIZES_KEY,
    TAILS_DB,
    TARGETS_KEY,
    Record,
    ShardMeta,
    check_checksum,
    decode_paths,
    decode_record,
    encode_key,
)
from ..contract.layout import find_shards, shard_of
from ..contract.lmdbfile import Identity, LmdbFile
from ..contract.shardfiles import meta_values, read_shard_meta, shard_file
from ..contract.shardlock import holder
from ..errors import CorruptRecordError, DamagedError, FormatError, IncompleteShardError


@dataclass(frozen=True)
class Shard:
    """Where one shard is, which file its metadata came from, and what a reader needs to read its arrays
    (small: it is pickled to workers)."""

    path: Path
    start: int  # global index of its first record
    count: int
    targets_dtype: str
    sizes_dtype: str
    identity: Identity  # of the data.mdb the metadata was read from

    def read(self, local: int, where: str) -> Record:
        """The checked record ``local`` of this shard, tail included, its target the metadata's.
        CorruptRecordError if it is missing, fails its checksum or disagrees with the metadata."""
        file = shard_file(self.path, self.identity)
        key = encode_key(local)
        value = file.read(RECORDS_DB, key, where)
        if value is None:
            raise CorruptRecordError(f"{where}: missing although the metadata lists it; {DamagedError.remedy}")
        record = decode_record(value, where, lambda: file.read(TAILS_DB, key, f"{where} tail"))
        expected = int(self._array(file, TARGETS_KEY, self.targets_dtype, 1, local, local + 1)[0])
        if record.target != expected:
            raise CorruptRecordError(f"{where}: target {record.target} differs from the metadata's {expected}; "
                                     f"{DamagedError.remedy}")
        return record

    def targets(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Class indices of records ``start``..``stop``, read from the file (a copy)."""
        return self._array(shard_file(self.path, self.identity), TARGETS_KEY, self.targets_dtype, 1, start, stop)

    def sizes(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(height, width) of the stored images of records ``start``..``stop``, read from the file (a copy)."""
        return self._array(shard_file(self.path, self.identity), SIZES_KEY, self.sizes_dtype, 2, start,
                           stop).reshape(-1, 2)

    def _array(self, file: LmdbFile, key: bytes, dtype: str, per_record: int, start: int, stop: int | None
               ) -> np.ndarray:
        stop = self.count if stop is None else stop
        itemsize = np.dtype(dtype).itemsize * per_record
        where = f"{self.path} {key.decode()}"
        found = file.locate(META_DB, key, where)
        if found is None:
            raise DamagedError(f"{self.path}: no {key.decode()!r} key; {DamagedError.remedy}")
        if found[1] != self.count * itemsize:
            raise DamagedError(f"{self.path}: {key.decode()!r} holds {found[1]} bytes, expected {self.count} records "
                              f"of {dtype}; {DamagedError.remedy}")
        if not 0 <= start <= stop <= self.count:
            raise IndexError(f"records {start}..{stop} outside the shard's {self.count}")
        data = file.read_at(found[0] + start * itemsize, (stop - start) * itemsize, where)
        return np.frombuffer(data, dtype).copy() if data else np.zeros(0, dtype)


def open_shard(path: Path, start: int = 0) -> tuple[Shard, ShardMeta]:
    """A finished shard's :class:`Shard` (``start``: the global index of its first record) and metadata,
    read from one file."""
    expected = shard_file(path).identity
    meta = read_shard_meta(path, expected)
    return Shard(path, start, meta.count, meta.targets_dtype, meta.sizes_dtype, expected), meta


@dataclass
class SplitInfo:
    """Everything a reader needs about one split, read from the shards' metadata."""

    root: Path
    split: str
    shards: list[Shard]
    metas: list[ShardMeta]
    arrays: list[tuple[np.ndarray, np.ndarray]]  # (targets, sizes) per shard, as checked on opening

    @property
    def wnids(self) -> list[str]:
        return list(self.metas[0].wnids)

    @property
    def classes(self) -> list[tuple[str, ...]]:
        return list(self.metas[0].classes)

    def __len__(self) -> int:
        return sum(m.count for m in self.metas)


def read_paths(shard_path: Path, expected: Identity | None = None) -> list[str]:
    """The source paths of every record of one shard, in record order (checked against their checksum)."""
    blob, checksums = meta_values(shard_path, PATHS_KEY, CHECKSUMS_KEY, expected=expected)
    if blob is None:
        raise DamagedError(f"{shard_path}: no paths key; {DamagedError.remedy}")
    check_checksum(checksums, "paths", blob, str(shard_path))
    return decode_paths(blob)


def load_split(root: Path | str, split: str) -> SplitInfo:
    """Read and cross-check the metadata of every shard of ``root/split`` and check the per-record arrays
    against their checksums; leaves no environment open. FormatError naming what is missing or wrong."""
    root = Path(root)
    split_dir = root / split
    check_root(root)
    if not split_dir.is_dir():
        raise FormatError(f"{root}: no split '{split}' in this database (splits present: {list_splits(root)})")
    paths = find_shards(split_dir)
    if not paths:
        raise FormatError(f"{split_dir}: no LMDB shard found (no data.mdb); convert the dataset first")
    opened = [open_shard(split_dir)] if paths == [split_dir] else _sharded(split_dir, paths)
    shards, metas, arrays, start = [], [], [], 0
    for (found, meta), path in zip(opened, paths):
        if meta.split != split or meta.wnids != opened[0][1].wnids or meta.fingerprint != opened[0][1].fingerprint:
            raise FormatError(f"{path}: holds split {meta.split!r}, other classes or other input than shard 0; "
                              "the shards are from different conversions, reconvert")
        shard = Shard(path, start, meta.count, meta.targets_dtype, meta.sizes_dtype, found.identity)
        targets, sizes = shard.targets(), shard.sizes()
        checksums = meta_values(path, CHECKSUMS_KEY, expected=shard.identity)[0]
        check_checksum(checksums, "targets", targets, str(path))
        check_checksum(checksums, "sizes", sizes, str(path))
        if meta.count and not 0 <= int(targets.min()) <= int(targets.max()) < len(meta.wnids):
            raise FormatError(f"{path}: metadata targets fall outside 0..{len(meta.wnids) - 1}; reconvert it")
        if meta.count and int(sizes.min()) < 1:
            raise FormatError(f"{path}: metadata sizes hold an empty image size; reconvert it")
        shards.append(shard)
        metas.append(meta)
        arrays.append((targets, sizes))
        start += meta.count
    return SplitInfo(root, split, shards, metas, arrays)


def _sharded(split_dir: Path, paths: list[Path]) -> list[tuple[Shard, ShardMeta]]:
    """Every shard ``shard-SSS-of-KKK`` of a split and its metadata, once all K are there and finished; else
    FormatError naming the missing and unfinished ones (several hosts may each write some)."""
    counts = {shard_of(p)[1] for p in paths}
    if len(counts) != 1:
        raise FormatError(f"{split_dir}: holds shards of conversions with different --shards {sorted(counts)}; "
                          "reconvert with --overwrite")
    num_shards, metas, unfinished = counts.pop(), {}, []
    for path in paths:
        try:
            shard, meta = open_shard(path)
        except IncompleteShardError:
            unfinished.append(shard_of(path)[0])
            continue
        if (meta.shard, meta.num_shards) != shard_of(path):
            raise FormatError(f"{path}: its metadata says shard {meta.shard} of {meta.num_shards}; reconvert it")
        metas[meta.shard] = (shard, meta)
    missing = sorted(set(range(num_shards)) - set(metas))
    running = [s for s in unfinished if holder(split_dir.parent, s) is not None]
    if running:
        raise IncompleteShardError(f"{split_dir}: shard(s) {', '.join(map(str, running))} of {num_shards} are not "
                                   f"finished; `imagenet-pack convert` (pid {holder(split_dir.parent, running[0])}) "
                                   "is writing them now: wait for it to finish")
    if missing:
        unfinished_note = f" ({', '.join(map(str, unfinished))} incomplete)" if unfinished else ""
        raise IncompleteShardError(
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
            out.append(open_shard(path, start))
        except FormatError:
            continue
        start += out[-1][1].count
    return out


def check_root(root: Path | str) -> Path:
    """``root`` as a Path; FormatError unless it is a database's folder: saying whether it is absent, a file,
    or one split of a database (the folder a reader wants is the one holding the splits)."""
    root = Path(root)
    if not root.is_dir():
        raise FormatError(f"{root}: " + ("not a folder: a database is a folder of splits" if root.exists()
                                         else "no such database directory"))
    if find_shards(root):
        raise FormatError(f"{root}: this is one split of a database, not the database; pass the folder that holds "
                          f"its splits: {root.parent}")
    return root


def list_splits(root: Path | str) -> list[str]:
    """The splits of the database at ``root`` (folders holding a shard)."""
    root = check_root(root)
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and find_shards(p))
    except OSError as exc:
        raise FormatError(f"{root}: cannot list it ({exc.strerror or exc})") from exc
