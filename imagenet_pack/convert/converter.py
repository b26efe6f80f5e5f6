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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from ..errors import ImagenetPackError, OutputExistsError
from ..format import Record, ShardMeta, encode_array, encode_paths, encode_record, size_dtype, target_dtype
from ..machine import default_workers
from ..read.reader import find_shards, shard_dir
from ..sources.detect import discover
from ..sources.folders import SPLITS
from ..sources.items import Item, SplitSource, read_item_stamped
from .prepare import PrepareOptions
from .report import REPORT_NAME, ConvertReport, SplitReport, audit, write_report
from .tasks import Result, init_worker, prepare_task
from .lock import check_no_overlap, hold_lock
from .resume import complete, rewind_to_changes, shard_ranges, stamps_crc, summarise_complete
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
    only_shards: tuple[int, ...] | None = None  # write only these of the ``shards`` (several hosts, one DST)

    def __post_init__(self) -> None:
        if self.only_shards is not None and not all(0 <= s < self.shards for s in self.only_shards):
            raise ValueError(f"only_shards {list(self.only_shards)} must lie in 0..{self.shards - 1} (--shards "
                             f"{self.shards})")

    @property
    def selected(self) -> tuple[int, ...]:
        """The shards this run writes."""
        return tuple(sorted(set(self.only_shards))) if self.only_shards is not None else tuple(range(self.shards))


def convert(src: Path | str, dst: Path | str, options: ConvertOptions = ConvertOptions()) -> ConvertReport:
    """Convert the splits found under ``src`` into ``dst/<split>/``; see :class:`ConvertOptions`.

    Raises:
        LayoutError: ``src`` is not a readable layout.
        OutputExistsError: the database is complete already, or a split holds a database or an interrupted
            conversion of other input or options (pass ``overwrite``), or files imagenet-pack did not write.
        BusyError: another conversion is running on ``dst``.

    A run killed anywhere is resumed by the same call; its finished splits and shards are kept as they are,
    and once it has finished, the same call again is a no-op. A database finished in one go (its report,
    written last, is there) is not converted again: OutputExistsError says it is complete. With
    ``only_shards``, only those shards are written (and checked, and replaced with ``overwrite``): hosts
    sharing storage can each write some shards of one database, which equals a one-host conversion.
    """
    src, dst = Path(src), Path(dst)
    check_no_overlap(src, dst)
    sources, notes = discover(src, options.splits, options.layout)
    dst.mkdir(parents=True, exist_ok=True)
    with hold_lock(dst, options.selected):
        gc.freeze()  # millions of long-lived items: keep the cyclic GC from rescanning them during the run
        try:
            return _convert(dst, options, sources, notes)
        finally:
            gc.unfreeze()


def _convert(dst: Path, options: ConvertOptions, sources: dict[str, SplitSource], notes: list[str]) -> ConvertReport:
    fingerprints = {s: _fingerprint(source, options) for s, source in sources.items()}
    done = {split: metas for split, source in sources.items() if not options.overwrite
            and (metas := complete(dst / split, fingerprints[split], source, options.selected)) is not None}
    report_path = dst / (REPORT_NAME if options.only_shards is None else
                         f"convert-report.shards-{'-'.join(map(str, options.selected))}.jsonl")
    resumed = any(m.resumed for metas in done.values() for m in metas)
    if set(done) == set(sources) and report_path.is_file() and not resumed:
        # finished in one go (the report is written last): refuse. After a kill, rerunning the same command is
        # how a job is resumed, so there the rerun of a finished database is a no-op.
        raise OutputExistsError(
            f"{dst}: already holds a complete database of this input for {', '.join(sorted(done))} (its report: "
            f"{report_path}); nothing to do. Pass --overwrite to convert it again")
    report_path.unlink(missing_ok=True)  # written again at the end: its presence marks a finished run
    workers = options.workers or default_workers()
    prep = PrepareOptions(options.max_side, options.quality)
    pool = multiprocessing.Pool(workers, init_worker, (prep,)) if workers > 1 else None
    reports = []
    try:
        for split, source in sources.items():
            if split in done:
                notes.append(f"{dst / split}: already complete, kept as it is")
                reports.append(summarise_complete(source, done[split]))
                continue
            if options.overwrite:
                remove_database(dst / split, _shard_dirs(dst / split, options) if options.only_shards else None)
            reports.append(_convert_split(source, dst / split, fingerprints[split], options, prep, pool))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    write_report(report_path, reports)
    return ConvertReport(reports, report_path, notes)


def _fingerprint(source: SplitSource, options: ConvertOptions) -> str:
    return f"{source.fingerprint()}|shards={options.shards}|max_side={options.max_side}|quality={options.quality}"


def _shard_dirs(split_dir: Path, options: ConvertOptions) -> list[Path]:
    return [shard_dir(split_dir, s, options.shards) for s in options.selected]


def _encode_result(result: Result, item: Item) -> tuple[bytes, bytes | None]:
    """The record value (and tail) for a stored result, in the parent."""
    image = result.image
    if image is None:
        image, stamp = read_item_stamped(item)
        if stamp != result.stamp:  # cheaper than a second CRC, and the parent's CPU is the scarce one
            raise ImagenetPackError(f"{item.path}: the file changed while it was being converted; rerun to resume")
    return encode_record(Record(image, item.target, result.height, result.width), mmap.PAGESIZE, crc=result.crc)


def _convert_split(source: SplitSource, split_dir: Path, fingerprint: str, options: ConvertOptions,
                   prep: PrepareOptions, pool) -> SplitReport:
    started = time.perf_counter()
    ranges = shard_ranges(len(source.items), options.shards)
    existing = find_shards(split_dir)
    if existing and set(existing) - {shard_dir(split_dir, s, options.shards) for s in range(options.shards)}:
        raise OutputExistsError(f"{split_dir}: holds shards of a conversion with another --shards; "
                                "pass --overwrite to start over")
    if split_dir.exists():
        owned_files(split_dir)  # never write into a folder of someone else's files
    estimate = _estimate_bytes(source)
    wanted = _shard_dirs(split_dir, options)
    writers: dict[int, ShardWriter] = {}
    notes = []
    try:
        for s, path in zip(options.selected, wanted):
            share = estimate * len(ranges[s]) // max(1, len(source.items))
            map_size = options.initial_map_size or int(share * 1.25) + (64 << 20)
            writers[s] = ShardWriter(path, fingerprint, map_size=map_size, batch_bytes=options.batch_bytes)
            notes += rewind_to_changes(writers[s], source, ranges[s])
        todo = [(s, pos, source.items[ranges[s][pos]]) for s, w in writers.items()
                if not w.complete for pos in range(w.position, len(ranges[s]))]
        total = sum(len(ranges[s]) for s in writers)
        results = _run(todo, prep, pool)
        bar = tqdm(total=total, initial=total - len(todo), unit="img",
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
        for w in writers.values():
            w.flush()
        report = _account(source, writers, ranges)
        report.complete = not report.skipped or options.skip_bad
        if report.complete:  # shard by shard: a kill between two leaves finished shards that a rerun keeps
            resumed = any(w.resumed for w in writers.values())
            for s, w in writers.items():
                if w.finished is None:
                    _finish_shard(w, source, fingerprint, options, s, ranges[s], resumed=resumed)
    finally:
        for w in writers.values():
            w.close()
    report.source_bytes = sum(_item_size(source.items[i]) for s in writers for i in ranges[s])
    report.db_bytes = sum((p / "data.mdb").stat().st_blocks * 512 for p in wanted if (p / "data.mdb").exists())
    report.seconds = time.perf_counter() - started
    report.warnings = notes + audit(source)
    return report


def _run(todo: list, prep: PrepareOptions, pool) -> Iterator[Result]:
    if pool is None:
        init_worker(prep, in_parent=True)
        return map(prepare_task, todo)
    return pool.imap(prepare_task, todo, chunksize=8)


def _account(source: SplitSource, writers: dict[int, ShardWriter], ranges: list[range]) -> SplitReport:
    report = SplitReport(source.split, source.description, ignored=list(source.ignored))
    for s, w in writers.items():
        rng = ranges[s]
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


def _finish_shard(writer: ShardWriter, source: SplitSource, fingerprint: str, options: ConvertOptions, shard: int,
                  rng: range, *, resumed: bool) -> None:
    """The final commit of one shard: its metadata, paths, per-record arrays."""
    rows = writer.rows()
    items = [source.items[rng[row.position]] for row in rows]
    targets, sizes = np.array([i.target for i in items]), np.array([row[1:3] for row in rows]).reshape(-1, 2)
    meta = ShardMeta(
        split=source.split, shard=shard, num_shards=options.shards, count=len(rows), wnids=tuple(source.wnids),
        classes=tuple(source.classes), targets_dtype=target_dtype(len(source.wnids)), sizes_dtype=size_dtype(sizes),
        fixed=tuple((i.path, row.fixed) for i, row in zip(items, rows) if row.fixed),
        skipped=tuple((source.items[rng[p.position]].path, p.reason) for p in writer.state.problems),
        stamps_crc32=stamps_crc([source.items[i] for i in rng]),
        max_side=options.max_side, quality=options.quality if options.max_side else None,
        source=source.description, fingerprint=fingerprint, resumed=resumed,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    writer.finish(meta, encode_paths([i.path for i in items]), encode_array(targets, meta.targets_dtype),
                  encode_array(sizes, meta.sizes_dtype))


def _estimate_bytes(source: SplitSource) -> int:
    sample = source.items[:: max(1, len(source.items) // 256)]
    if not sample:
        return 0
    mean = sum(_item_size(i) for i in sample) / len(sample)
    return int(mean * len(source.items))


def _item_size(item: Item) -> int:
    return item.size if item.size >= 0 else os.stat(item.file).st_size
