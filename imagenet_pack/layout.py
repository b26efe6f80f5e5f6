"""Where a database's pieces are, the one owner of every name imagenet-pack gives what it writes::

    DST/
      .imagenet-pack.shard-000.lock       one per shard a conversion writes (convert/lock.py)
      convert-report.jsonl                written last by a conversion of every shard (or .shards-0-1.jsonl)
      train/data.mdb, train/lock.mdb      a one-shard split: one LMDB environment ...
      val/shard-000-of-004/data.mdb       ... or K shards, shard-SSS-of-KKK (strictly: anything else is not ours)

It also opens a shard read-only and reads its metadata, for both wings (the converter resumes and checks,
the reader opens splits), through the bounds-checked view of :mod:`imagenet_pack.lmdbfile`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import FormatError, IncompleteShardError
from .format import CHECKSUMS_KEY, LENGTH_KEY, META_DB, META_KEY, ShardMeta, check_checksum, decode_key
from .lmdbfile import DATA_FILE, LOCK_FILE, LmdbFile

LMDB_FILES = (DATA_FILE, LOCK_FILE)
REPORT_NAME = "convert-report.jsonl"
_SHARD_NAME = re.compile(r"shard-(\d{3})-of-(\d{3})")
MAX_SHARDS = 999


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:03d}-of-{num_shards:03d}"


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """(shard, num_shards) of a ``shard-SSS-of-KKK`` folder name, or None for any other name."""
    match = _SHARD_NAME.fullmatch(name)
    if match is None:
        return None
    shard, num_shards = int(match.group(1)), int(match.group(2))
    return (shard, num_shards) if 0 <= shard < num_shards else None


def shard_dir(split_dir: Path, shard: int, num_shards: int) -> Path:
    """A one-shard split is a plain LMDB directory; K shards are ``shard-SSS-of-KKK`` folders inside it."""
    return split_dir if num_shards == 1 else split_dir / shard_name(shard, num_shards)


def shard_of(path: Path) -> tuple[int, int]:
    """(shard, num_shards) of a shard directory found by :func:`find_shards`."""
    return parse_shard_name(path.name) or (0, 1)


def find_shards(split_dir: Path) -> list[Path]:
    """The shard directories of a split, in shard order: the split folder itself when it is one environment,
    else its ``shard-SSS-of-KKK`` folders holding a data.mdb (other entries are not shards and are left
    alone); none where there is no such folder. FormatError if the folder cannot be listed."""
    if (split_dir / DATA_FILE).is_file():
        return [split_dir]
    if not split_dir.is_dir():
        return []
    try:
        entries = sorted(split_dir.iterdir())
    except OSError as exc:
        raise FormatError(f"{split_dir}: cannot list it ({exc.strerror or exc})") from exc
    return [p for p in entries if parse_shard_name(p.name) and (p / DATA_FILE).is_file()]


def lock_path(dst: Path, shard: int) -> Path:
    """One lock per shard: hosts writing different shards of one database share DST."""
    return dst / f".imagenet-pack.shard-{shard:03d}.lock"


def report_path(dst: Path, only_shards: tuple[int, ...] | None) -> Path:
    """The conversion report: one per set of shards written together (several hosts each write their own)."""
    if only_shards is None:
        return dst / REPORT_NAME
    return dst / f"convert-report.shards-{'-'.join(map(str, only_shards))}.jsonl"


_FILES: dict[str, tuple[int, int, LmdbFile]] = {}  # resolved path -> (inode, size, this process's view)
_RESOLVED: dict[str, str] = {}  # path as spelled -> resolved (a record read must not walk the path each time)


def shard_file(path: Path | str) -> LmdbFile:
    """This process's bounds-checked view of the shard at ``path`` (made on first use, and again when the
    file was replaced or resized since). Views are plain read-only maps: fork- and spawn-safe, never pickled."""
    spelled = os.fspath(path)
    key = _RESOLVED.get(spelled) or _RESOLVED.setdefault(spelled, os.path.realpath(spelled))
    try:
        st = os.stat(os.path.join(key, DATA_FILE))
    except OSError as exc:
        raise FormatError(f"{path}: cannot read its {DATA_FILE} ({exc.strerror or exc})") from exc
    cached = _FILES.get(key)
    if cached is not None and cached[:2] == (st.st_ino, st.st_size):
        return cached[2]
    if cached is not None:
        cached[2].close()
    _FILES[key] = (st.st_ino, st.st_size, LmdbFile(key))
    return _FILES[key][2]


def close_shard(path: Path | str) -> None:
    """Drop this process's view of the shard at ``path`` (before writing to it, or to free its map)."""
    _RESOLVED.pop(os.fspath(path), None)  # a link re-pointed since resolves anew
    cached = _FILES.pop(os.path.realpath(path), None)
    if cached is not None:
        cached[2].close()


def meta_values(path: Path | str, *keys: bytes) -> list[bytes | None]:
    """The values of ``keys`` in a shard's ``meta`` table, copied out."""
    file = shard_file(path)
    return [file.read(META_DB, key, f"{path} meta {key.decode()}") for key in keys]


def read_shard_meta(path: Path) -> ShardMeta:
    """The metadata of one complete shard. IncompleteShardError if its conversion has not finished;
    FormatError if it is missing, damaged or of another version."""
    if not (path / DATA_FILE).is_file():
        raise FormatError(f"{path}: no database here (no {DATA_FILE}); convert a dataset first")
    length, value, checksums = meta_values(path, LENGTH_KEY, META_KEY, CHECKSUMS_KEY)
    if length is None or value is None:
        raise IncompleteShardError(f"{path}: incomplete database (no length key): its conversion did not "
                                   "finish; rerun the same `imagenet-pack convert` command to resume it")
    meta = ShardMeta.from_msgpack(value, str(path))  # a version check first: older formats differ
    check_checksum(checksums, "meta", value, str(path))
    try:
        length = decode_key(length)
    except FormatError:
        length = -1
    if length != meta.count:
        raise FormatError(f"{path}: length key says {length} records, its metadata {meta.count}; reconvert it")
    return meta
