"""The converter: source splits -> sharded LMDB databases, in parallel, resumable, with an honest report.

Worker processes read and validate files (:mod:`.prepare`) in parallel; the parent receives the results in
source order and commits them in batches. Records are assigned to shards by source position (contiguous
ranges), so the database is the same for any worker count, and the global order of records is the source
order for any shard count.
"""
from __future__ import annotations

import gc
import mmap
import multiprocessing
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from ..errors import FormatError, ImagenetPackError, OutputExistsError
from ..format import Record, Row, ShardMeta, encode_paths, encode_record
from ..machine import default_workers
from ..read.reader import close_handle, find_shards, read_paths, read_shard_meta, shard_dir
from ..sources.detect import discover
from ..sources.folders import SPLITS
from ..sources.items import Item, SplitSource, read_item_stamped
from .prepare import PrepareOptions
from .report import REPORT_NAME, ConvertReport, SplitReport, audit, write_report
from .tasks import Result, init_worker, prepare_task
from .lock import check_no_overlap, hold_lock
from .writer import ShardWriter, owned_files, remove_database


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert. ``workers=None`` uses every core; ``max_side`` enables FFCV-style write-time resize."""

    splits: tuple[str, ...] = SPLITS
    workers: int | None = None
    shards: int = 1
    overwrite: bool = False
    skip_bad: bool = False
    max_side: int | None = None
    quality: int = 90
    layout: str = "auto"
    progress: bool = True
    initial_map_size: int | None = None  # None: estimated from the source size; the map grows when full
    batch_bytes: int = 64 << 20


def convert(src: Path | str, dst: Path | str, options: ConvertOptions = ConvertOptions()) -> ConvertReport:
    """Convert the splits found under ``src`` into ``dst/<split>/``; see :class:`ConvertOptions`.

    Raises:
        LayoutError: ``src`` is not a readable layout.
        OutputExistsError: a split holds a database or an interrupted conversion of other input or options
            (pass ``overwrite``), or files imagenet-pack did not write.
        BusyError: another conversion is running on ``dst``.

    A complete database of the same input and options is kept as it is (the rerun is a no-op).
    """
    src, dst = Path(src), Path(dst)
    check_no_overlap(src, dst)
    sources, notes = discover(src, options.splits, options.layout)
    dst.mkdir(parents=True, exist_ok=True)
    with hold_lock(dst):
        gc.freeze()  # millions of long-lived items: keep the cyclic GC from rescanning them during the run
        try:
            return _convert(dst, options, sources, notes)
        finally:
            gc.unfreeze()


def _convert(dst: Path, options: ConvertOptions, sources: dict[str, SplitSource], notes: list[str]) -> ConvertReport:
    fingerprints = {s: _fingerprint(source, options) for s, source in sources.items()}
    done = {split for split, source in sources.items()
            if not options.overwrite and _complete(dst / split, fingerprints[split], source)}
    workers = options.workers or default_workers()
    prep = PrepareOptions(options.max_side, options.quality)
    pool = multiprocessing.Pool(workers, init_worker, (prep,)) if workers > 1 else None
    reports = []
    try:
        for split, source in sources.items():
            if split in done:
                notes.append(f"{dst / split}: already complete, kept as it is")
                reports.append(_summarise_complete(dst / split, source))
                continue
            if options.overwrite:
                remove_database(dst / split)
            reports.append(_convert_split(source, dst / split, fingerprints[split], options, prep, pool))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    report_path = dst / REPORT_NAME
    write_report(report_path, reports)
    return ConvertReport(reports, report_path, notes)


def _fingerprint(source: SplitSource, options: ConvertOptions) -> str:
    return f"{source.fingerprint()}|shards={options.shards}|max_side={options.max_side}|quality={options.quality}"


def _complete(split_dir: Path, fingerprint: str, source: SplitSource) -> bool:
    """Whether ``split_dir`` holds a complete database of this input and these options (then the rerun is a
    no-op); OutputExistsError if it holds a complete one of other input or options, or of files changed since."""
    paths = find_shards(split_dir)
    if not paths:
        return False
    try:
        metas = []
        for path in paths:
            try:
                metas.append(read_shard_meta(path))
            except FormatError:  # incomplete or unreadable shard: not complete, the writer decides what to do
                return False
    finally:
        for path in paths:
            close_handle(path)
    if len(metas) != metas[0].num_shards:
        return False
    if metas[0].fingerprint != fingerprint:
        raise OutputExistsError(
            f"{split_dir}: holds a complete database made from other input or options; "
            "pass --overwrite to replace it"
        )
    ranges = _shard_ranges(len(source.items), len(metas))
    changed = [m.shard for m, rng in zip(metas, ranges) if m.stamps_crc32 != _stamps_crc([source.items[i] for i in rng])]
    if changed:
        raise OutputExistsError(f"{split_dir}: source files of shard(s) {changed} changed (size or mtime) since the "
                                "database was made; pass --overwrite to convert them again")
    return True


def _encode_result(result: Result, item: Item) -> tuple[bytes, bytes | None]:
    """The record value (and tail) for a stored result, in the parent."""
    image = result.image
    if image is None:
        image, stamp = read_item_stamped(item)
        if stamp != result.stamp:  # cheaper than a second CRC, and the parent's CPU is the scarce one
            raise ImagenetPackError(f"{item.path}: the file changed while it was being converted; rerun to resume")
    return encode_record(Record(image, item.target, result.height, result.width), mmap.PAGESIZE, crc=result.crc)


def _shard_ranges(count: int, shards: int) -> list[range]:
    return [range(s * count // shards, (s + 1) * count // shards) for s in range(shards)]


def _convert_split(source: SplitSource, split_dir: Path, fingerprint: str, options: ConvertOptions,
                   prep: PrepareOptions, pool) -> SplitReport:
    started = time.perf_counter()
    ranges = _shard_ranges(len(source.items), options.shards)
    existing = find_shards(split_dir)
    wanted = [shard_dir(split_dir, s, options.shards) for s in range(options.shards)]
    if existing and set(existing) - set(wanted):
        raise OutputExistsError(f"{split_dir}: holds shards of a conversion with another --shards; "
                                "pass --overwrite to start over")
    if split_dir.exists():
        owned_files(split_dir)  # never write into a folder of someone else's files
    estimate = _estimate_bytes(source)
    writers, notes = [], []
    try:
        for s, rng in enumerate(ranges):
            share = estimate * len(rng) // max(1, len(source.items))
            map_size = options.initial_map_size or int(share * 1.25) + (64 << 20)
            writers.append(ShardWriter(wanted[s], fingerprint, map_size=map_size, batch_bytes=options.batch_bytes))
            notes += _rewind_to_changes(writers[-1], source, rng)
        todo = [(s, pos, source.items[rng[pos]]) for s, (w, rng) in enumerate(zip(writers, ranges))
                if not w.complete for pos in range(w.position, len(rng))]
        results = _run(todo, prep, pool)
        bar = tqdm(total=len(source.items), initial=len(source.items) - len(todo), unit="img",
                   desc=f"{source.split}", disable=not options.progress, smoothing=0.1)
        read_bytes, t0 = 0, time.perf_counter()
        for result in results:
            value, tail = None, None
            if result.stored:
                value, tail = _encode_result(result, source.items[ranges[result.shard][result.position]])
            writers[result.shard].add(result.position, value, tail, result.row)
            read_bytes += result.nbytes
            bar.update(1)
            if bar.n % 64 == 0:
                bar.set_postfix_str(f"{read_bytes / 1e6 / max(time.perf_counter() - t0, 1e-9):.1f} MB/s")
        bar.close()
        for w in writers:
            w.flush()
        report = _account(source, writers, ranges)
        report.complete = not report.skipped or options.skip_bad
        if report.complete:  # shard by shard: a kill between two leaves finished shards that a rerun keeps
            start = 0
            for s, (w, rng) in enumerate(zip(writers, ranges)):
                if w.finished is not None:
                    start += w.finished.count
                    continue
                rows = w.rows()
                w.finish(_shard_meta(source, fingerprint, options, s, start, rows, rng, report.stored,
                                     w.state.problems, resumed=any(x.resumed for x in writers)),
                         encode_paths([source.items[rng[row.position]].path for row in rows]))
                start += len(rows)
    finally:
        for w in writers:
            w.close()
    report.source_bytes = _source_bytes(source)
    report.db_bytes = sum((p / "data.mdb").stat().st_blocks * 512 for p in wanted if (p / "data.mdb").exists())
    report.seconds = time.perf_counter() - started
    report.warnings = notes + audit(source)
    return report


def _rewind_to_changes(writer: ShardWriter, source: SplitSource, rng: range) -> list[str]:
    """Rewind an interrupted shard to the first file that failed before (it may have been fixed) or changed
    since it was converted (its size or mtime differ from the scan's); say which files changed."""
    if writer.complete:
        return []
    changed = [row for row in writer.rows() if source.items[rng[row.position]].stamp != row[4:6]]
    first = min([p.position for p in writer.state.problems] + [r.position for r in changed], default=None)
    if first is None:
        return []
    writer.rewind(first)
    if not changed:
        return []
    names = ", ".join(source.items[rng[r.position]].path for r in changed[:10]) + (" ..." if len(changed) > 10 else "")
    return [f"{writer.path}: {len(changed)} file(s) changed since they were converted ({names}); converted "
            f"again from {source.items[rng[first]].path}"]


def _stamps_crc(items: list[Item]) -> int:
    return zlib.crc32(np.array([i.stamp for i in items], "<i8").tobytes())


def _run(todo: list, prep: PrepareOptions, pool) -> Iterator[Result]:
    if pool is None:
        init_worker(prep, in_parent=True)
        return map(prepare_task, todo)
    return pool.imap(prepare_task, todo, chunksize=8)


def _account(source: SplitSource, writers: list[ShardWriter], ranges: list[range]) -> SplitReport:
    report = SplitReport(source.split, source.description, ignored=list(source.ignored))
    for w, rng in zip(writers, ranges):
        if w.finished is not None:
            report.stored += w.finished.count
            report.skipped += w.finished.skipped
            report.fixed += w.finished.fixed
            continue
        report.stored += w.state.count
        for position, reason in w.state.problems:
            report.skipped.append((source.items[rng[position]].path, reason))
        for row in w.rows():
            if row.fixed:
                report.fixed.append((source.items[rng[row.position]].path, row.fixed))
    report.found = len(source.items) + len(source.ignored)
    return report


def _shard_meta(source: SplitSource, fingerprint: str, options: ConvertOptions, shard: int, start: int,
                rows: list[Row], rng: range, total: int, problems, *, resumed: bool) -> ShardMeta:
    items = [source.items[rng[row.position]] for row in rows]
    return ShardMeta(
        split=source.split, shard=shard, num_shards=options.shards, start=start, count=len(rows), total=total,
        wnids=tuple(source.wnids), classes=tuple(source.classes), targets=np.array([i.target for i in items]),
        sizes=np.array([(row.height, row.width) for row in rows]).reshape(-1, 2),
        fixed=tuple((i.path, row.fixed) for i, row in zip(items, rows) if row.fixed),
        skipped=tuple((source.items[rng[p.position]].path, p.reason) for p in problems),
        max_side=options.max_side, quality=options.quality if options.max_side else None,
        stamps_crc32=_stamps_crc([source.items[i] for i in rng]),
        source=source.description, fingerprint=fingerprint, resumed=resumed,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _summarise_complete(split_dir: Path, source: SplitSource) -> SplitReport:
    metas = [read_shard_meta(p) for p in find_shards(split_dir)]
    for p in find_shards(split_dir):
        close_handle(p)
    report = SplitReport(source.split, source.description, complete=True, already_complete=True,
                         ignored=list(source.ignored))
    report.stored = sum(m.count for m in metas)
    report.fixed = [f for m in metas for f in m.fixed]
    report.skipped = [f for m in metas for f in m.skipped]
    report.found = len(source.items) + len(source.ignored)
    report.warnings = audit(source)
    return report


def _estimate_bytes(source: SplitSource) -> int:
    sample = source.items[:: max(1, len(source.items) // 256)]
    if not sample:
        return 0
    mean = sum(_item_size(i) for i in sample) / len(sample)
    return int(mean * len(source.items))


def _item_size(item: Item) -> int:
    return item.size if item.size >= 0 else os.stat(item.file).st_size


def _source_bytes(source: SplitSource) -> int:
    return sum(_item_size(i) for i in source.items)


