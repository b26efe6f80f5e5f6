"""Check a database end to end: length key, metadata, paths and stamps, every record's checksum, target and
size, optionally more.

``decode=True`` also decodes every image (as the converter validated it: libjpeg's warnings are damage) and
checks its size; ``source`` compares every record with the file it came from (byte-equal for records stored
as they were; for re-encoded ones, the size the store options give the source's header) and its target.
Records are read one by one by key, so a damaged page costs the records on it, never the rest of the check
(and, read through :class:`imagenet_pack.lmdbfile.LmdbFile`, never a signal); ``workers`` processes (default:
every core, as the converter) check records in parallel and report exactly what one would, in record order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .contract.codec import decode_checked, stored_size
from .contract.format import (
    CHECKSUMS_KEY,
    RECORDS_DB,
    STAMPS_DTYPE,
    STAMPS_KEY,
    check_checksum,
    decode_array,
    decode_key,
)
from .contract.probe import ProbeError, probe
from .contract.shardfiles import meta_values, shard_file
from .errors import FormatError, ImagenetPackError
from .machine import default_workers
from .meter import ProgressMeter
from .pool import OrderedPool, WorkerDied
from .read.reader import Shard, finished_shards, list_splits, load_split, read_paths
from .sources.detect import discover
from .sources.items import MAX_FILE_BYTES, Item, read_item

_CHUNK = 256  # records per task


@dataclass
class VerifyReport:
    """Records checked and every problem found, each naming its shard and key."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)
    damaged: set[Path] = field(default_factory=set)  # the shards that hold a problem (``convert --repair``)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Task:
    """What a worker checks: records ``start``..``stop`` of one shard."""

    shard: Shard
    start: int
    stop: int
    num_classes: int
    resized: bool  # stored with --max-side/--short-side: re-encoded, so compared with its source by size
    decode: bool
    sources: tuple  # (path, Item or None, fixed) per record, when comparing with the source
    store: tuple[int | None, int | None]  # the database's short_side and max_side: what size a source is stored at


def verify(root: Path | str, *, decode: bool = False, source: Path | str | None = None, workers: int | None = None,
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
    inputs = discover(Path(source), tuple(splits))[0] if source is not None else {}
    tasks = []
    for split in splits:
        try:
            info = load_split(root, split)
            shards = list(zip(info.shards, info.metas))
        except FormatError as exc:  # e.g. shards other hosts have not finished: check the finished ones
            report.problems.append(str(exc))
            shards = finished_shards(Path(root) / split)
        by_path = {item.path: item for item in inputs[split].items} if split in inputs else None
        for shard, meta in shards:
            before = len(report.problems)
            try:
                tasks += _shard_tasks(shard, meta, decode, by_path, report)
            except FormatError as exc:
                report.problems.append(str(exc))
            if len(report.problems) > before:
                report.damaged.add(shard.path)
    meter = ProgressMeter(sum(t.stop - t.start for t in tasks), "verify", "records", enabled=progress)
    workers = default_workers() if workers is None else workers  # every core by default, as convert
    pool = OrderedPool(workers, _check, chunk=1) if workers > 1 and len(tasks) > 1 else None  # steady progress
    try:
        for task, (checked, problems) in zip(tasks, pool.map(tasks) if pool else map(_check, tasks)):
            report.checked += checked
            report.problems += problems
            if problems:
                report.damaged.add(task.shard.path)
            meter.update(checked)
    except WorkerDied as exc:
        first = exc.tasks[0] if exc.tasks else None
        report.damaged.update(task.shard.path for task in exc.tasks)
        report.problems.append(f"verify {exc}" + (f" while checking {first.shard.path} records {first.start}.."
                                                  f"{first.stop - 1}" if first else "") + "; the rest is unchecked")
    finally:
        if pool is not None:
            pool.close()
        meter.close()
    return report


def _shard_tasks(shard: Shard, meta, decode: bool, by_path: dict | None, report: VerifyReport) -> list[_Task]:
    """The shard's checks that need the whole shard (keys beyond its length; the paths and stamps, against
    their checksums and the record count), then its records in chunks."""
    try:
        last = shard_file(shard.path, shard.identity).last_key(RECORDS_DB, f"{shard.path} records")
        if last is not None and (len(last) != 8 or decode_key(last) >= shard.count):
            report.problems.append(f"{shard.path}: holds record key {last.hex()} beyond its {shard.count} records")
    except ImagenetPackError as exc:
        report.problems.append(str(exc))
    paths: list[str] = []
    try:
        paths = read_paths(shard.path, shard.identity)
        if len(paths) != shard.count:
            report.problems.append(f"{shard.path}: lists {len(paths)} source paths for {shard.count} records")
        stamps, checksums = meta_values(shard.path, STAMPS_KEY, CHECKSUMS_KEY, expected=shard.identity)
        check_checksum(checksums, "stamps", stamps or b"", str(shard.path))
        decode_array(stamps, STAMPS_DTYPE, 2 * meta.items, str(shard.path), "stamps")
    except FormatError as exc:
        report.problems.append(str(exc))
    sources: list = []
    if by_path is not None:
        fixed = {p for p, _ in meta.fixed}
        sources = [(p, by_path.get(p), p in fixed) for p in paths]
    resized = bool(meta.max_side or meta.short_side)
    store = (meta.short_side, meta.max_side)
    return [_Task(shard, start, min(start + _CHUNK, shard.count), len(meta.wnids), resized, decode,
                  tuple(sources[start:start + _CHUNK]), store) for start in range(0, shard.count, _CHUNK)]


def _check(task: _Task) -> tuple[int, list[str]]:
    """Check records ``task.start``..``task.stop``: (records checked, problems)."""
    problems: list[str] = []
    shard = task.shard
    try:
        sizes = shard.sizes(task.start, task.stop)
    except ImagenetPackError as exc:
        return 0, [str(exc)]
    for local in range(task.start, task.stop):
        where = f"{shard.path} record {local}"
        try:
            record = shard.read(local, where)
        except ImagenetPackError as exc:
            problems.append(str(exc))
            continue
        if not 0 <= record.target < task.num_classes:
            problems.append(f"{where}: target {record.target} outside the {task.num_classes} classes")
        height, width = (int(v) for v in sizes[local - task.start])
        size = (height, width)
        if (record.height, record.width) != size:
            problems.append(f"{where}: stored size {record.height}x{record.width} differs from the metadata's {size}")
        if task.decode:
            problems += _decode_problems(record, where)
        if task.sources:
            problems += _source_problems(record, task.sources[local - task.start], size, task, where)
    return task.stop - task.start, problems


def _decode_problems(record, where: str) -> list[str]:
    rgb, damage = decode_checked(record.image)
    if rgb is None or rgb.shape[:2] != (record.height, record.width):
        return [f"{where}: image does not decode to its stored {record.height}x{record.width}"]
    return [f"{where}: libjpeg finds the image damaged: {damage}"] if damage else []


def _source_problems(record, source: tuple[str, Item | None, bool], size: tuple[int, int], task: _Task,
                     where: str) -> list[str]:
    path, item, fixed = source
    if item is None:
        return [f"{where}: its source {path} is not in the source given"]
    try:
        data, _ = read_item(item, MAX_FILE_BYTES)
    except OSError as exc:
        return [f"{where}: its source {path} cannot be read ({exc.strerror or exc})"]
    if fixed or task.resized:  # re-encoded when stored: the source's header must give the stored size
        try:
            header = probe(data)
            same = stored_size(header.height, header.width, *task.store) == size
        except ProbeError:
            same = False
    else:
        same = data == record.image
    return [] if same and item.target == record.target else [f"{where}: differs from its source {path}"]
