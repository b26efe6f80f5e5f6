"""Where a database's pieces are, the one owner of every name imagenet-pack gives what it writes::

    DST/
      .imagenet-pack.lock                 the conversion locks: a byte per shard (shardlock.py)
      convert-report.jsonl                written last by a conversion of every shard (or .shards-0-1.jsonl)
      train/data.mdb, train/lock.mdb      a one-shard split: one LMDB environment ...
      val/shard-000-of-004/data.mdb       ... or K shards, shard-SSS-of-KKK (strictly: anything else is not ours)

It also opens a shard read-only and reads its metadata, for both wings (the converter resumes and checks,
the reader opens splits), through the bounds-checked view of :mod:`imagenet_pack.lmdbfile`.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from .errors import FormatError, IncompleteShardError
from .format import CHECKSUMS_KEY, LENGTH_KEY, META_DB, META_KEY, ShardMeta, check_checksum, decode_key
from .lmdbfile import DATA_FILE, LOCK_FILE, Identity, LmdbFile, changed_message
from .shardlock import holder, lock_path

COMPACTING_FILE = DATA_FILE + ".compacting"  # a shard's compacted copy, renamed over data.mdb once complete
LMDB_FILES = (DATA_FILE, LOCK_FILE, COMPACTING_FILE)
REPORT_NAME = "convert-report.jsonl"
_SHARD_NAME = re.compile(r"shard-(\d{3})-of-(\d{3})")


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


def running_note(path: Path) -> str:
    """"; a conversion (pid N) is writing it now" for a shard folder whose lock a conversion holds, else ""."""
    parsed = parse_shard_name(path.name)
    dst, shard = (path.parent.parent, parsed[0]) if parsed else (path.parent, 0)
    pid = holder(dst, shard)
    return f"; `imagenet-pack convert` (pid {pid}) is writing it now: wait for it to finish" if pid is not None else ""


def report_path(dst: Path, only_shards: tuple[int, ...] | None) -> Path:
    """The conversion report: one per set of shards written together (several hosts each write their own),
    named by the set in runs (``shards-0-127``, ``shards-0_2_5-9``); a set too long to name (over
    ``_REPORT_NAME_MAX`` bytes) by its size and a digest of it, so the name always fits the filesystem."""
    if only_shards is None:
        return dst / REPORT_NAME
    chosen = sorted(set(only_shards))
    runs, start = [], 0
    for i in range(1, len(chosen) + 1):
        if i == len(chosen) or chosen[i] != chosen[i - 1] + 1:
            runs.append(str(chosen[start]) if i - start == 1 else f"{chosen[start]}-{chosen[i - 1]}")
            start = i
    name = f"convert-report.shards-{'_'.join(runs)}.jsonl"
    if len(name) > _REPORT_NAME_MAX:
        digest = hashlib.sha256(",".join(map(str, chosen)).encode()).hexdigest()[:16]
        name = f"convert-report.{len(chosen)}-shards-{chosen[0]}-to-{chosen[-1]}-{digest}.jsonl"
    return dst / name


_REPORT_NAME_MAX = 200  # leaves room for the temporary name a report is written under


def temporary_name(path: Path) -> Path:
    """Where a file is written before it is renamed into place: in the same folder, unique to this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def check_names(dst: Path, splits: tuple[str, ...], num_shards: int, only_shards: tuple[int, ...] | None) -> None:
    """FormatError, before any work, if a name a conversion of these ``splits`` and shards would create in
    ``dst`` exceeds what its filesystem allows for a name or a path (``pathconf``)."""
    selected = sorted(set(only_shards)) if only_shards is not None else list(range(num_shards))
    report = report_path(dst, only_shards)
    paths = [temporary_name(report), lock_path(dst)]
    for split in splits:
        for s in (selected[:1] + selected[-1:]):  # every shard folder name has one length
            paths += [shard_dir(dst / split, s, num_shards) / name for name in LMDB_FILES]
    existing = dst
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        name_max, path_max = os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for path in paths:
        long = next((part for part in path.parts if len(os.fsencode(part)) > name_max), None)
        if long is not None:
            raise FormatError(f"{dst}: a conversion would create the name {long!r}, {len(os.fsencode(long))} bytes, "
                              f"over this filesystem's limit of {name_max}")
        if len(os.fsencode(path.absolute())) >= path_max:
            raise FormatError(f"{dst}: a conversion would create {path}, a path over this system's limit of "
                              f"{path_max} bytes; choose a shorter DST")


_FILES: dict[str, LmdbFile] = {}  # path as spelled -> this process's reader of that shard, oldest first
_USERS: dict[str, int] = {}  # path -> datasets of this process using it (their readers stay open)
UNUSED_KEPT = 16  # readers no dataset uses that stay open (metadata read again soon); older ones are closed


def shard_file(path: Path | str, expected: Identity | None = None) -> LmdbFile:
    """This process's bounds-checked reader of the shard at ``path``, made on first use (readers are plain
    file descriptors read with ``pread``: fork- and spawn-safe, never pickled). ``expected`` is the identity
    of the data.mdb a caller read the metadata from (a dataset's): FormatError if the file there is another
    now, so old metadata is never paired with new records. Without it, a file rewritten or replaced since
    the last call is opened afresh. A reader lives as long as the datasets using it (:func:`use_shards`);
    of the others, only the :data:`UNUSED_KEPT` newest stay open."""
    spelled = os.fspath(path)
    file = _FILES.get(spelled)
    if file is not None and file.changed():
        close_shard(spelled)
        file = None
    if file is None:
        try:
            file = _FILES[spelled] = LmdbFile(spelled)
        except FormatError:
            if expected is None:
                raise
            file = None
        _close_unused()
    if file is None or (expected is not None and file.identity != expected):
        raise FormatError(changed_message(os.path.join(spelled, DATA_FILE)) + running_note(Path(spelled)))
    return file


def _close_unused() -> None:
    unused = [p for p in _FILES if not _USERS.get(p)]
    for path in unused[:max(0, len(unused) - UNUSED_KEPT)]:
        close_shard(path)


def use_shards(paths: list[str]) -> None:
    """A dataset of this process reads the shards at ``paths``: their readers stay open until it is gone."""
    for path in paths:
        _USERS[path] = _USERS.get(path, 0) + 1


def done_with_shards(paths: list[str]) -> None:
    """A dataset reading ``paths`` is gone: readers no dataset uses any more are closed (their descriptors
    freed, and with them the disk space of a database deleted since)."""
    for path in paths:
        left = _USERS.get(path, 0) - 1
        if left > 0:
            _USERS[path] = left
            continue
        _USERS.pop(path, None)
        close_shard(path)


def close_shard(path: Path | str) -> None:
    """Drop this process's reader of the shard at ``path`` (before writing to it, or to free its descriptor)."""
    file = _FILES.pop(os.fspath(path), None)
    if file is not None:
        file.close()


def meta_values(path: Path | str, *keys: bytes, expected: Identity | None = None) -> list[bytes | None]:
    """The values of ``keys`` in a shard's ``meta`` table (of the file ``expected`` names, when given)."""
    file = shard_file(path, expected)
    return [file.read(META_DB, key, f"{path} meta {key.decode()}") for key in keys]


def read_shard_meta(path: Path, expected: Identity | None = None) -> ShardMeta:
    """The metadata of one complete shard (of the file ``expected`` names, when given). IncompleteShardError
    if its conversion has not finished, saying whether one is running (then anything unreadable in it is
    the conversion's work in progress, not damage); FormatError if it is missing, damaged or of another
    version."""
    if not (path / DATA_FILE).is_file():
        raise FormatError(f"{path}: no database here (no {DATA_FILE}); convert a dataset first")
    try:
        return _read_shard_meta(path, expected)
    except FormatError as exc:
        note = running_note(path)
        if not note:
            raise
        raise IncompleteShardError(f"{path}: its conversion is not finished{note}") from exc


def _read_shard_meta(path: Path, expected: Identity | None) -> ShardMeta:
    length, value, checksums = meta_values(path, LENGTH_KEY, META_KEY, CHECKSUMS_KEY, expected=expected)
    if length is None or value is None:
        raise IncompleteShardError(f"{path}: incomplete database (no length key): its conversion did not "
                                   f"finish; {IncompleteShardError.remedy}")
    meta = ShardMeta.from_msgpack(value, str(path))  # a version check first: older formats differ
    check_checksum(checksums, "meta", value, str(path))
    try:
        count = decode_key(length)
    except FormatError:
        count = -1
    if count != meta.count:
        raise FormatError(f"{path}: length key says {count} records, its metadata {meta.count}; reconvert it")
    return meta
