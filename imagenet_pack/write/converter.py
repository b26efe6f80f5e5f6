"""The converter: source splits -> sharded LMDB databases, in parallel, resumable, with an honest report.

Worker processes read and validate files (:mod:`.prepare`) in parallel (:mod:`.pool`); the parent receives
the results in source order and commits them in batches (:mod:`.split`). Records are assigned to shards by
source position (contiguous ranges), so the database is the same for any worker count, and the global order
of records is the source order for any shard count.
"""
from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path

from ..contract.layout import check_names, report_path
from ..errors import DestinationError, LayoutError
from ..machine import default_workers
from ..pool import OrderedPool
from ..sources.detect import discover
from ..sources.items import SplitSource
from .lock import check_no_overlap, hold_lock
from .options import ConvertOptions
from .ownership import remove_database
from .report import ConvertReport, SplitReport, report_from_metas, write_report
from .resume import find_complete
from .split import SplitConversion
from .tasks import init_worker, prepare_task


def convert(src: Path | str, dst: Path | str, options: ConvertOptions = ConvertOptions(), *,
            echo: Callable[[str], None] | None = None, again: dict[str, list[Path]] | None = None) -> ConvertReport:
    """Convert the splits found under ``src`` into ``dst/<split>/``; see :class:`ConvertOptions`. ``echo``
    receives notes on what was found as they happen (the CLI prints them). ``again``: split -> shard folders
    to convert again (damaged ones, :func:`imagenet_pack.repair.repair`), removed first under the lock,
    each file proved ours.

    Raises:
        LayoutError: ``src`` is not a readable layout.
        OutputExistsError: a split holds a database or an interrupted conversion of other input or options, or
            source files changed since it was completed (pass ``overwrite``), or files imagenet-pack did not
            write.
        BusyError: another conversion is running on ``dst``.

    A run killed anywhere is resumed by the same call. The same call over its own complete database with
    unchanged sources is a no-op (``ConvertReport.noop``) that writes nothing (but its report, if that was
    removed) and takes no lock, so it also works on a read-only database. With ``only_shards``, only those
    shards are written (and checked, and replaced with ``overwrite``): hosts sharing storage can each write
    some shards of one database, which equals a one-host conversion.
    """
    src, dst = Path(src), Path(dst)
    echo = echo or (lambda line: None)
    if dst.exists() and not dst.is_dir():
        raise DestinationError(f"{dst}: exists and is not a folder; DST is the folder the databases go in")
    check_no_overlap(src, dst)
    check_names(dst, options.splits, options.shards, options.only_shards)
    sources, notes = discover(src, options.splits, options.layout)
    missing = [split for split in options.splits if split not in sources]
    if options.require_splits and missing:
        raise LayoutError(f"{src}: no {' or '.join(missing)} data found, but --splits asks for "
                          f"{','.join(options.splits)}: add it to SRC, or leave it out of --splits")
    for note in notes:
        echo(note)
    again = {split: shards for split, shards in (again or {}).items() if shards}
    done = _complete_splits(dst, options, sources) if dst.is_dir() and not again else {}
    if set(done) == set(sources):  # the same command over its own complete database: nothing to write
        return _already_complete(dst, options, sources, done, notes, echo)
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DestinationError(f"{dst}: cannot create the output folder ({exc.strerror or exc})") from None
    if not os.access(dst, os.W_OK | os.X_OK):
        raise DestinationError(f"{dst}: this user cannot write in the output folder; choose another DST or fix "
                                "its permissions")
    with hold_lock(dst, options.selected):
        gc.freeze()  # millions of long-lived items: keep the cyclic GC from rescanning them during the run
        try:
            for split, shards in again.items():
                remove_database(dst / split, None if shards == [dst / split] else shards)
            return _convert(dst, options, sources, notes, echo)
        finally:
            gc.unfreeze()


def _complete_splits(dst: Path, options: ConvertOptions, sources: dict[str, SplitSource]) -> dict[str, list]:
    """split -> metadata of its selected shards, for the splits complete for this input and these options
    (read only: nothing is written or locked to find out)."""
    if options.overwrite:
        return {}
    return {split: metas for split, source in sources.items()
            if (metas := find_complete(dst / split, options.fingerprint(source), source, options.selected))
            is not None}


def _already_complete(dst: Path, options: ConvertOptions, sources: dict[str, SplitSource], done: dict,
                      notes: list[str], echo: Callable[[str], None]) -> ConvertReport:
    report_file = report_path(dst, options.only_shards)
    reports = [_complete(dst, split, sources[split], done[split], options) for split in sources]
    if not report_file.is_file():
        write_report(report_file, reports)
    echo(f"{dst}: already complete for this input and these options; nothing to do")
    return ConvertReport(reports, report_file, notes, noop=True)


def _convert(dst: Path, options: ConvertOptions, sources: dict[str, SplitSource], notes: list[str],
             echo: Callable[[str], None]) -> ConvertReport:
    done = _complete_splits(dst, options, sources)  # again, under the lock
    if set(done) == set(sources):
        return _already_complete(dst, options, sources, done, notes, echo)
    report_file = report_path(dst, options.only_shards)
    workers = options.workers or default_workers()
    pool = OrderedPool(workers, prepare_task, init_worker, (options.prepare,)) if workers > 1 else None
    reports: list[SplitReport] = []
    try:
        for split, source in sources.items():
            if split in done:
                echo(f"{dst / split}: already complete, kept as it is")
                reports.append(_complete(dst, split, source, done[split], options))
                continue
            conversion = SplitConversion(source, dst / split, options)
            if options.overwrite and options.only_shards:
                conversion.check_existing()  # shards of another --shards cannot be replaced one by one
                remove_database(dst / split, conversion.shard_dirs())
            elif options.overwrite:
                remove_database(dst / split)
            reports.append(conversion.run(pool, echo))
    finally:
        if pool is not None:
            pool.close()
    write_report(report_file, reports)
    return ConvertReport(reports, report_file, notes)


def _complete(dst: Path, split: str, source: SplitSource, metas: list, options: ConvertOptions) -> SplitReport:
    report = report_from_metas(source, metas)
    report.source_bytes, report.db_bytes = SplitConversion(source, dst / split, options).sizes()
    return report
