"""Check a database end to end: length key, metadata, every record's checksum and target, optionally more.

``decode=True`` also decodes every image and checks its size; ``source`` compares every record with the
file it came from (byte-equal for records stored as they were, same original size for re-encoded ones).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .convert.prepare import PrepareOptions, prepare
from .errors import FormatError, ImagenetPackError
from .format import decode_key
from .read.pixels import DECODE_FLAGS
from .read.reader import (close_handle, finished_shards, list_splits, load_split, open_handle, read_paths,
                          shard_arrays)
from .sources.detect import discover
from .sources.items import read_item


@dataclass
class VerifyReport:
    """Records checked and every problem found, each naming its shard and key."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(root: Path | str, *, decode: bool = False, source: Path | str | None = None,
           progress: bool = False) -> VerifyReport:
    """Check every split of ``root``; problems name the shard and key. Never raises on damaged records."""
    report = VerifyReport()
    try:
        splits = list_splits(root)
    except FormatError as exc:
        report.problems.append(str(exc))
        return report
    if not splits:
        report.problems.append(f"{root}: no database found")
    sources = _sources(Path(source), tuple(splits)) if source is not None else {}
    for split in splits:
        try:
            info = load_split(root, split)
            shards = list(zip(info.shards, info.metas))
        except FormatError as exc:  # e.g. shards other hosts have not finished: check the finished ones
            report.problems.append(str(exc))
            shards = finished_shards(Path(root) / split)
        by_path = {}
        if split in sources:
            by_path = {item.path: item for item in sources[split].items}
        for shard, meta in shards:
            try:
                _verify_shard(shard, meta, decode, by_path, report, progress)
            except FormatError as exc:
                report.problems.append(str(exc))
    return report


def _sources(src: Path, splits: tuple[str, ...]):
    return discover(src, splits)[0]


def _verify_shard(shard, meta, decode, by_path, report, progress) -> None:
    targets, sizes = shard_arrays(shard)
    try:
        paths = read_paths(shard.path)  # checks the paths' checksum
    except FormatError as exc:
        report.problems.append(str(exc))
        paths = []
    fixed = {p for p, _ in meta.fixed}
    expected = 0
    handle = open_handle(shard.path)
    try:
        with handle.env.begin(db=handle.records, buffers=True) as txn:
            bar = tqdm(txn.cursor(), total=shard.count, desc=str(shard.path), unit="rec", disable=not progress)
            for key, value in bar:
                local = decode_key(key)
                where = f"{shard.path} record {local}"
                if local != expected:
                    report.problems.append(f"{shard.path}: key {expected} missing (next key is {local})")
                    expected = local
                expected += 1
                report.checked += 1
                try:
                    record = handle.decode(txn, key, value, where)
                except ImagenetPackError as exc:
                    report.problems.append(str(exc))
                    continue
                if local >= meta.count or record.target != targets[local]:
                    report.problems.append(f"{where}: target {record.target} differs from the metadata")
                if local < meta.count and meta.max_side is None and \
                        (record.height, record.width) != tuple(int(v) for v in sizes[local]):
                    report.problems.append(f"{where}: stored size {record.height}x{record.width} differs from the "
                                           f"metadata's {tuple(int(v) for v in sizes[local])}")
                if not 0 <= record.target < len(meta.wnids):
                    report.problems.append(f"{where}: target {record.target} outside 0..{len(meta.wnids) - 1}")
                if decode:
                    rgb = cv2.imdecode(np.frombuffer(record.image, np.uint8), DECODE_FLAGS)
                    if rgb is None or rgb.shape[:2] != (record.height, record.width):
                        report.problems.append(f"{where}: image does not decode to its stored "
                                               f"{record.height}x{record.width}")
                if by_path and local < len(paths):
                    item = by_path.get(paths[local])
                    if item is None:
                        report.problems.append(f"{where}: source {paths[local]} not found in the source")
                        continue
                    data = read_item(item)
                    if paths[local] in fixed or meta.max_side:
                        prepared = prepare(data, PrepareOptions(meta.max_side, meta.quality or 90))
                        same = prepared.image is not None and (prepared.orig_height, prepared.orig_width) == \
                            tuple(int(v) for v in sizes[local])
                    else:
                        same = data == record.image
                    if not same or item.target != record.target:
                        report.problems.append(f"{where}: differs from its source {paths[local]}")
    finally:
        close_handle(shard.path)
    if expected != shard.count:
        report.problems.append(f"{shard.path}: {expected} records, the length key says {shard.count}")
