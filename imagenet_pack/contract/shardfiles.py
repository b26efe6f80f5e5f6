"""This process's readers of shard files, and a shard's metadata read through them, for both wings (the
converter resumes and checks, the reader opens splits): plain descriptors read with ``pread`` through the
bounds-checked view of :mod:`.lmdbfile`, each checked against the file it was opened from.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import FormatError, IncompleteShardError
from .format import CHECKSUMS_KEY, LENGTH_KEY, META_DB, META_KEY, ShardMeta, check_checksum, decode_key
from .layout import parse_shard_name
from .lmdbfile import DATA_FILE, Identity, LmdbFile, changed_message
from .shardlock import holder


def running_note(path: Path) -> str:
    """"; a conversion (pid N) is writing it now" for a shard folder whose lock a conversion holds, else ""."""
    parsed = parse_shard_name(path.name)
    dst, shard = (path.parent.parent, parsed[0]) if parsed else (path.parent, 0)
    pid = holder(dst, shard)
    return f"; `imagenet-pack convert` (pid {pid}) is writing it now: wait for it to finish" if pid is not None else ""


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
