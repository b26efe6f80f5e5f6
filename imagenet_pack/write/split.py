"""One split's conversion: its shards' writers, the items still to convert, the commits, the final metadata."""
from __future__ import annotations

import logging
import mmap
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..contract.format import Record, ShardMeta, encode_record
from ..contract.layout import find_shards, shard_dir, shard_of
from ..contract.lmdbfile import DATA_FILE
from ..errors import InterruptedRunError, OutputExistsError
from ..meter import ProgressMeter
from ..pool import OrderedPool, WorkerDied
from ..sources.items import Item, SplitSource, read_item
from .options import ConvertOptions
from .ownership import make_own_folder, owned_files
from .report import SplitReport, audit
from .resume import item_stamps, rewind_to_changes, shard_ranges
from .tasks import Result, init_worker, prepare_task
from .writer import ShardWriter

log = logging.getLogger(__name__)


class ShardWriters:
    """The shard writers of a run by shard, opened on first use and at most :attr:`MAX_OPEN` at once (each
    holds a few descriptors: its folder, LMDB's two files, a reader), so a run of any shard count stays far
    below the process's descriptor limit: the least recently used is flushed and closed, and opened again where
    it left off when needed (results come in shard order, so that is rare)."""

    MAX_OPEN = 8

    def __init__(self, make: Callable[[int], ShardWriter]):
        self.make = make
        self.open: OrderedDict[int, ShardWriter] = OrderedDict()
        self.resumed: dict[int, bool] = {}  # whether each shard held an earlier run's work when first opened

    def __getitem__(self, shard: int) -> ShardWriter:
        writer = self.open.get(shard)
        if writer is not None:
            self.open.move_to_end(shard)
            return writer
        while len(self.open) >= self.MAX_OPEN:
            _, oldest = self.open.popitem(last=False)
            oldest.flush()
            oldest.close()
        writer = self.open[shard] = self.make(shard)
        self.resumed.setdefault(shard, writer.resumed)
        return writer

    def flush(self) -> None:
        for writer in self.open.values():
            writer.flush()

    def __enter__(self) -> ShardWriters:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close every writer still open (what each committed stays; a batch not flushed is dropped)."""
        for writer in self.open.values():
            writer.close()
        self.open.clear()


class SplitConversion:
    """Converts ``source`` into ``split_dir`` with ``options``."""

    def __init__(self, source: SplitSource, split_dir: Path, options: ConvertOptions):
        self.source, self.split_dir, self.options = source, split_dir, options
        self.fingerprint = options.fingerprint(source)
        self.ranges = shard_ranges(len(source.items), options.shards)
        self._mean_size: float | None = None  # of a source file, sampled when the first writer opens

    def shard_dirs(self) -> list[Path]:
        """The folders of the shards this run writes."""
        return [shard_dir(self.split_dir, s, self.options.shards) for s in self.options.selected]

    def check_existing(self) -> None:
        """OutputExistsError if the split holds shards of another --shards, or files we did not write."""
        if not self.split_dir.exists():
            return
        counts = {shard_of(p)[1] for p in find_shards(self.split_dir)}
        if counts and counts != {self.options.shards}:
            hint = ("--overwrite with --only-shards replaces some shards of a database of the same --shards: "
                    "give its --shards, or --overwrite without --only-shards to replace the whole split"
                    if self.options.overwrite and self.options.only_shards else "pass --overwrite to start over")
            raise OutputExistsError(f"{self.split_dir}: holds shards of a conversion with --shards "
                                    f"{', '.join(map(str, sorted(counts)))}, not {self.options.shards}; {hint}")
        owned_files(self.split_dir)  # never write into a folder of someone else's files

    def run(self, pool: OrderedPool | None, echo: Callable[[str], None]) -> SplitReport:
        started = time.perf_counter()
        self.check_existing()
        with ShardWriters(self._writer) as writers:
            notes = self._open(writers)
            for note in notes:
                echo(note)
            converted = self._convert(writers, pool)
            report = self._account(writers)
            report.complete = not report.skipped or self.options.skip_bad
            if report.complete:  # shard by shard: a kill between two leaves finished shards that a rerun keeps
                self._finish(writers)
        report.converted, report.seconds = converted, time.perf_counter() - started
        report.source_bytes, report.db_bytes = self.sizes()
        warnings, report.class_counts = audit(self.source)
        for line in warnings:  # said by the run that converts; a split found complete is only reported
            log.warning(line)
        report.warnings = notes + warnings
        return report

    def sizes(self) -> tuple[int, int]:
        """Bytes of the source files of the shards this run writes, and of their databases on disk."""
        source = sum(_item_size(self.source.items[i]) for s in self.options.selected for i in self.ranges[s])
        data = [p / DATA_FILE for p in self.shard_dirs()]
        return source, sum(p.stat().st_blocks * 512 for p in data if p.is_file())

    def _writer(self, s: int) -> ShardWriter:
        if self._mean_size is None:  # once a run: a writer may be opened again (ShardWriters keeps a few open)
            items = self.source.items
            sample = items[:: max(1, len(items) // 256)]
            self._mean_size = sum(_item_size(i) for i in sample) / max(1, len(sample))
        map_size = self.options.initial_map_size or int(self._mean_size * len(self.ranges[s]) * 1.25) + (64 << 20)
        return ShardWriter(shard_dir(self.split_dir, s, self.options.shards), self.fingerprint, map_size=map_size,
                           batch_bytes=self.options.batch_bytes)

    def _open(self, writers: ShardWriters) -> list[str]:
        notes = []
        make_own_folder(self.split_dir)  # a real folder, not a link planted to make us write elsewhere
        for s in self.options.selected:
            notes += rewind_to_changes(writers[s], self.source, self.ranges[s])
        return notes

    def _convert(self, writers: ShardWriters, pool: OrderedPool | None) -> int:
        """Convert every item not yet committed, in order; returns how many there were."""
        todo = []
        for s in self.options.selected:
            w = writers[s]
            if not w.is_finished:
                todo += [(s, item, self.source.items[self.ranges[s][item]])
                         for item in range(w.next_item, len(self.ranges[s]))]
        total = sum(len(self.ranges[s]) for s in self.options.selected)
        meter = ProgressMeter(total, f"convert {self.source.split}", "img", enabled=self.options.progress,
                              initial=total - len(todo))
        read, started = 0, time.perf_counter()
        try:
            for n, result in enumerate(self._results(todo, pool)):
                value, tail = self._encode(result) if result.stored else (None, None)
                writers[result.shard].add(result.item, value, tail, result.row)
                read += result.nbytes
                meter.update(1, f"{read / 1e6 / max(time.perf_counter() - started, 1e-9):.1f} MB/s"
                             if n % 64 == 0 else None)
        except WorkerDied as exc:
            writers.flush()  # what came back before it is kept: the rerun starts after it
            names = [task[2].path for task in exc.tasks]
            raise InterruptedRunError(
                f"{exc} while reading {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} (the out-of-memory "
                "killer, if the system log says so: use fewer --workers); everything before them is kept, rerun "
                "the same command to resume") from None
        finally:
            meter.close()
        writers.flush()
        return len(todo)

    def _results(self, todo: list, pool: OrderedPool | None) -> Iterator[Result]:
        if pool is None:
            init_worker(self.options.prepare, in_parent=True)
            return map(prepare_task, todo)
        return pool.map(todo)

    def _encode(self, result: Result) -> tuple[bytes, bytes | None]:
        """The record value (and tail) of a stored result, in the parent: unchanged sources are read again
        here (from the page cache) and must be the very file the worker read."""
        item = self.source.items[self.ranges[result.shard][result.item]]
        image = result.image
        if image is None:
            try:
                image, read_id = read_item(item, self.options.prepare.max_bytes)
            except OSError:
                image = None
            # the very file the worker read (cheaper than a second CRC, and the parent's CPU is the scarce one)
            if image is None or read_id != result.read_id:
                raise InterruptedRunError(f"{item.path}: the file changed or vanished while it was being converted; "
                                        "rerun the same command to resume")
        return encode_record(Record(image, item.target, result.height, result.width), mmap.PAGESIZE,
                             image_crc=result.image_crc)

    def _account(self, writers: ShardWriters) -> SplitReport:
        source = self.source
        report = SplitReport(source.split, source.description, ignored=list(source.ignored))
        for s in self.options.selected:
            w, rng = writers[s], self.ranges[s]
            if w.finished is not None:
                report.stored += w.finished.count
                report.skipped += w.finished.skipped
                report.fixed += w.finished.fixed
                continue
            report.stored += w.state.count
            report.skipped += [(source.items[rng[p.item]].path, p.reason) for p in w.state.problems]
            report.fixed += [(source.items[rng[row.item]].path, row.fixed) for row in w.rows() if row.fixed]
        report.found = len(source.items) + len(source.ignored)
        return report

    def _finish(self, writers: ShardWriters) -> None:
        """The final commit of every unfinished shard: its metadata, paths and per-record arrays."""
        resumed = any(writers.resumed.values())
        source, options = self.source, self.options
        for s in options.selected:
            w = writers[s]
            if w.is_finished:
                continue
            rng, rows = self.ranges[s], w.rows()
            items = [source.items[rng[row.item]] for row in rows]
            meta = ShardMeta(
                split=source.split, shard=s, num_shards=options.shards, count=len(rows), items=len(rng),
                wnids=tuple(source.wnids), classes=tuple(source.classes),
                fixed=tuple((i.path, row.fixed) for i, row in zip(items, rows) if row.fixed),
                skipped=tuple((source.items[rng[p.item]].path, p.reason) for p in w.state.problems),
                max_side=options.max_side, short_side=options.short_side,
                quality=options.quality if options.max_side or options.short_side else None,
                source=source.description, fingerprint=self.fingerprint, resumed=resumed,
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            w.finish(meta, [i.path for i in items], np.array([i.target for i in items]),
                     np.array([(row.height, row.width) for row in rows]).reshape(-1, 2),
                     item_stamps([source.items[i] for i in rng]))


def _item_size(item: Item) -> int:
    return item.size if item.size >= 0 else os.stat(item.file).st_size
