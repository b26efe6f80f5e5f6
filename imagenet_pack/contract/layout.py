"""Where a database's pieces are, the one owner of every name imagenet-pack gives what it writes::

    DST/
      .imagenet-pack.lock                 the conversion locks: a byte per shard (shardlock.py)
      convert-report.jsonl                written last by a conversion of every shard (or .shards-0-1.jsonl)
      train/data.mdb, train/lock.mdb      a one-shard split: one LMDB environment ...
      val/shard-000-of-004/data.mdb       ... or K shards, shard-SSS-of-KKK (strictly: anything else is not ours)

It names things; reading them is :mod:`.shardfiles`'.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ..errors import FormatError
from .lmdbfile import DATA_FILE, LOCK_FILE
from .shardlock import lock_path

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
