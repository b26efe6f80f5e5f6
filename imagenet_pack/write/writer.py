"""Write one shard: batched commits, map growth on demand, resumable after a kill.

The commit that creates the shard's tables also stores its progress, so from its very first commit the
environment says it is ours (before it, it holds nothing: :func:`.ownership.written_by_us`). Each commit
stores a batch of records together with the shard's progress (next item, records stored, what was fixed or
skipped) in the same LMDB transaction, so after kill -9 the shard holds exactly a prefix of the work and the
state to continue from it. The metadata, arrays and length key go in the last commit. py-lmdb writes; what
the writer reads back (its state, its rows) it reads through the bounds-checked view of
:mod:`imagenet_pack.lmdbfile`, so a shard damaged since an interrupted run is an error, never a signal.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import lmdb
import numpy as np

from ..contract.format import (
    CHECKSUMS_KEY,
    LENGTH_KEY,
    META_DB,
    META_KEY,
    PATHS_KEY,
    PROGRESS_KEY,
    RECORDS_DB,
    TAILS_DB,
    ShardMeta,
    encode_arrays,
    encode_checksums,
    encode_key,
    encode_paths,
)
from ..contract.layout import COMPACTING_FILE
from ..contract.lmdbfile import DATA_FILE, LmdbFile
from ..contract.shardfiles import close_shard
from ..errors import (
    DestinationError,
    DiskFullError,
    FormatError,
    InterruptedRunError,
    NoTablesError,
    OutputExistsError,
)
from .ownership import open_shard_folder
from .state import Problem, Progress, Row, decode_rows, encode_rows, rows_key


class ShardWriter:
    """Appends records to one shard in item order: ``with ShardWriter(path, ...) as out:``, :meth:`add` per
    item, then :meth:`finish`; leaving the block closes it (what was committed stays, a resumable prefix)."""

    def __init__(self, path: Path, fingerprint: str, *, map_size: int, batch_bytes: int):
        self.path, self.batch_bytes = path, batch_bytes
        self.folder, pinned = open_shard_folder(path)  # held open: LMDB writes in exactly this folder
        close_shard(path)  # this process's reader of it, if any: it is about to change
        try:
            self.env = lmdb.open(pinned, map_size=max(map_size, 1 << 20), max_dbs=3, subdir=True,
                                 readahead=False, meminit=False)
        except lmdb.Error as exc:
            os.close(self.folder)
            raise DestinationError(f"{path}: cannot open the shard for writing ({exc})") from exc
        try:
            self._open_tables(fingerprint)
        except BaseException:
            self.close()
            raise
        self._pending: list[tuple[int, bytes | None, bytes | None, Row | Problem]] = []  # item, value, tail, row
        self._pending_bytes = 0

    def _open_tables(self, fingerprint: str) -> None:
        try:
            length, state, value = self.read_meta(LENGTH_KEY, PROGRESS_KEY, META_KEY)
        except NoTablesError:  # a new shard: its tables and progress in one commit
            self.records, self.tails, self.meta = self._write(self._create_tables(fingerprint))
            self.state, self.finished, self.resumed = Progress(fingerprint), None, False
            return
        except FormatError as exc:
            raise FormatError(f"{exc}; rerun with --overwrite to start over") from exc
        self.records, self.tails, self.meta = (self.env.open_db(n, create=False)
                                               for n in (RECORDS_DB, TAILS_DB, META_DB))
        # a shard finished by an earlier (killed) run of a multi-shard conversion
        finished = length is not None and value is not None
        self.finished = ShardMeta.from_msgpack(value, str(self.path)) if finished and value is not None else None
        self.resumed = True
        if self.finished is not None:
            if self.finished.fingerprint != fingerprint:
                raise OutputExistsError(f"{self.path}: holds a finished shard of different input or options; "
                                        "rerun with --overwrite to start over")
            self.state = Progress(fingerprint)
            return
        if state is None:
            raise FormatError(f"{self.path}: holds neither a finished shard nor conversion progress; "
                              "rerun with --overwrite to start over")
        self.state = Progress.from_msgpack(state, str(self.path))
        if self.state.fingerprint != fingerprint:
            raise OutputExistsError(f"{self.path}: holds an interrupted conversion of different input or options; "
                                    "rerun with --overwrite to start over")

    def _create_tables(self, fingerprint: str):
        def body(txn):
            tables = [self.env.open_db(name, txn=txn) for name in (RECORDS_DB, TAILS_DB, META_DB)]
            txn.put(PROGRESS_KEY, Progress(fingerprint).to_msgpack(), db=tables[2])
            return tables
        return body

    @property
    def is_finished(self) -> bool:
        return self.finished is not None

    @property
    def next_item(self) -> int:
        """The next item this shard needs (everything before it is committed)."""
        return self.state.next_item

    def add(self, item: int, value: bytes | None, tail: bytes | None, row: Row | Problem) -> None:
        """Queue ``item``: an encoded record (see ``format.encode_record``) and its :class:`Row`, or
        ``value=None`` and a :class:`Problem`."""
        if item != self.state.next_item + len(self._pending):
            raise ValueError(f"{self.path}: item {item} out of order")
        self._pending.append((item, value, tail, row))
        self._pending_bytes += len(value) if value else 0
        if self._pending_bytes >= self.batch_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        self.state = self._write(self._commit_pending)
        self._pending, self._pending_bytes = [], 0

    def _write(self, body):
        """Run ``body(txn)`` in one write transaction, doubling the map and retrying when it is full."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    return body(txn)
            except lmdb.MapFullError:  # the transaction was aborted: nothing of it is on disk
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.Error as exc:
                raise _write_error(self.path, exc, self.batch_bytes) from exc

    def _commit_pending(self, txn) -> Progress:
        state = self.state
        rows: list[Row] = []
        problems, count = list(state.problems), state.count
        for _, value, tail, row in self._pending:
            if isinstance(row, Problem):
                problems.append(row)
                continue
            key = encode_key(count)
            if not txn.put(key, value, db=self.records, append=True) or (
                    tail is not None and not txn.put(key, tail, db=self.tails, append=True)):
                raise FormatError(f"{self.path}: record key {count} already present; reconvert with --overwrite")
            rows.append(row)
            count += 1
        txn.put(rows_key(state.batches), encode_rows(rows), db=self.meta)
        state = Progress(state.fingerprint, self._pending[-1][0] + 1, count, state.batches + 1, tuple(problems))
        txn.put(PROGRESS_KEY, state.to_msgpack(), db=self.meta)
        return state

    def read_meta(self, *keys: bytes) -> list[bytes | None]:
        """The committed values of ``keys`` in the shard's ``meta`` table, copied out."""
        file = LmdbFile(str(self.path))
        try:
            return [file.read(META_DB, key, f"{self.path} meta {key!r}") for key in keys]
        finally:
            file.close()

    def rows(self) -> list[Row]:
        """The rows of every committed batch, in record order."""
        values = self.read_meta(*(rows_key(b) for b in range(self.state.batches)))
        return [row for b, value in enumerate(values) for row in decode_rows(value, f"{self.path} batch {b}")]

    def rewind(self, first: int) -> None:
        """Forget everything from item ``first`` on, so it is converted again (a file that failed may have been
        fixed, one converted may have changed): records stay in item order, so every later item is converted
        again too."""
        kept = [row for row in self.rows() if row.item < first]

        def body(txn) -> Progress:
            for key in range(len(kept), self.state.count):
                txn.delete(encode_key(key), db=self.records)
                txn.delete(encode_key(key), db=self.tails)
            for b in range(self.state.batches):
                txn.delete(rows_key(b), db=self.meta)
            txn.put(rows_key(0), encode_rows(kept), db=self.meta)
            problems = tuple(p for p in self.state.problems if p.item < first)
            state = Progress(self.state.fingerprint, first, len(kept), 1, problems)
            txn.put(PROGRESS_KEY, state.to_msgpack(), db=self.meta)
            return state

        self.state = self._write(body)

    def restart(self) -> None:
        """Empty a finished shard to convert it again from its first item (its sources changed)."""
        assert self.finished is not None, "restart() is for a finished shard"
        fingerprint = self.finished.fingerprint

        def body(txn) -> Progress:
            for db in (self.records, self.tails, self.meta):
                txn.drop(db, delete=False)
            txn.put(PROGRESS_KEY, Progress(fingerprint).to_msgpack(), db=self.meta)
            return Progress(fingerprint)

        self.state, self.finished = self._write(body), None

    def finish(self, meta: ShardMeta, paths: list[str], targets: np.ndarray, sizes: np.ndarray,
               stamps: np.ndarray) -> ShardMeta:
        """Write the metadata (with the array types :func:`~imagenet_pack.format.encode_arrays` chose), source
        paths, the per-record arrays, their checksums and the length key in one final commit, drop the progress
        state, sync, add the zero guard. Returns the metadata as written."""
        self.flush()
        arrays, targets_dtype, sizes_dtype = encode_arrays(targets, sizes, stamps, len(meta.wnids))
        meta = dataclasses.replace(meta, targets_dtype=targets_dtype, sizes_dtype=sizes_dtype)
        value, blob = meta.to_msgpack(), encode_paths(paths)
        values = {META_KEY: value, PATHS_KEY: blob, **arrays}

        def body(txn) -> None:
            for b in range(self.state.batches):
                txn.delete(rows_key(b), db=self.meta)
            txn.delete(PROGRESS_KEY, db=self.meta)
            for key, data in values.items():
                txn.put(key, data, db=self.meta)
            txn.put(CHECKSUMS_KEY, encode_checksums(**{k.decode(): v for k, v in values.items()}), db=self.meta)
            txn.put(LENGTH_KEY, encode_key(meta.count), db=self.meta)  # read back with decode_key

        self._write(body)
        self.finished = meta
        self.env.sync(True)
        self._compact()
        return meta

    SLACK = 1.10  # a finished file larger than this times the pages it uses is compacted (a clean one: far less)

    def _compact(self) -> None:
        """Rewrite the finished shard without the pages it no longer uses, when they are many: records stored
        again after a rewind (a fixed file, a changed one) leave their first copies' pages free, and LMDB can
        seldom reuse them for new records, which need runs of free pages. A compact copy is written beside the
        file (through the shard's folder), synced and renamed over it; without room for it, the shard stays
        as it is (whole, only larger)."""
        used = 2  # the two meta pages
        with self.env.begin() as txn:
            for db in (None, self.records, self.tails, self.meta):
                stat = txn.stat(db) if db is not None else self.env.stat()
                used += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        pages = self.env.info()["last_pgno"] + 1
        if pages <= used * self.SLACK + 16:
            return
        fd = os.open(COMPACTING_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0), 0o644, dir_fd=self.folder)
        try:
            self.env.copyfd(fd, compact=True)
            os.fsync(fd)
        except (lmdb.Error, OSError):  # no room for the copy: the shard is whole as it is
            os.close(fd)
            os.unlink(COMPACTING_FILE, dir_fd=self.folder)
            return
        os.close(fd)
        self.env.close()
        os.rename(COMPACTING_FILE, DATA_FILE, src_dir_fd=self.folder, dst_dir_fd=self.folder)
        os.fsync(self.folder)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.env.close()
        if self.folder >= 0:
            os.close(self.folder)
            self.folder = -1


def _write_error(path: Path, exc: lmdb.Error, batch_bytes: int) -> InterruptedRunError:
    """LMDB's failure to commit, in words: a full disk says so (LMDB reports it as an I/O error)."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        free = None
    if free is not None and free < 2 * batch_bytes + (64 << 20):
        return DiskFullError(f"{path}: disk full ({free >> 20} MiB free on its filesystem): LMDB could not "
                                 f"commit ({exc}); free space, then rerun the same command to resume")
    return InterruptedRunError(f"{path}: LMDB could not commit ({exc}); fix the cause, then rerun the same command "
                             "to resume")
