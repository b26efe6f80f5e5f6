"""Write one shard: batched commits, map growth on demand, resumable after a kill.

Each commit stores a batch of records together with the shard's progress (next source position, records
stored, what was fixed or skipped) in the same LMDB transaction, so after kill -9 the shard holds exactly a
prefix of the work and the state to continue from it. The metadata and the length key go in the last commit.
"""
from __future__ import annotations

from pathlib import Path

import lmdb

from ..errors import FormatError, OutputExistsError
from ..format import (CHECKSUMS_KEY, LENGTH_KEY, META_DB, META_KEY, PATHS_KEY, PROGRESS_KEY, RECORDS_DB, SIZES_KEY,
                      TAILS_DB, TARGETS_KEY, Problem, Progress, Row, ShardMeta, decode_rows, encode_checksums,
                      encode_key, encode_length, encode_rows, rows_key)

DEFAULT_BATCH_BYTES = 64 << 20


class ShardWriter:
    """Appends records to one shard in source order; call :meth:`add` per source position, then finish."""

    def __init__(self, path: Path, fingerprint: str, *, map_size: int, batch_bytes: int = DEFAULT_BATCH_BYTES):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=max(map_size, 1 << 20), max_dbs=3, subdir=True,
                             readahead=False, meminit=False)
        with self.env.begin(write=True) as txn:
            self.records = self.env.open_db(RECORDS_DB, txn=txn)
            self.tails = self.env.open_db(TAILS_DB, txn=txn)
            self.meta = self.env.open_db(META_DB, txn=txn)
        with self.env.begin(db=self.meta) as txn:
            length, state, meta = txn.get(LENGTH_KEY), txn.get(PROGRESS_KEY), txn.get(META_KEY)
        # a shard finished by an earlier (killed) run of a multi-shard conversion: kept as it is
        self.finished = ShardMeta.from_msgpack(meta, str(path)) if length is not None and meta is not None else None
        self.complete = self.finished is not None
        if self.finished is not None and self.finished.fingerprint != fingerprint:
            self.env.close()
            raise OutputExistsError(f"{path}: holds a finished shard of different input or options; "
                                    "rerun with --overwrite to start over")
        self.resumed = state is not None or self.complete
        if self.complete:
            state = Progress(fingerprint)
        elif state is None:
            state = Progress(fingerprint)
            with self.env.begin(write=True, db=self.meta) as txn:  # from now on a rerun is a resume
                txn.put(PROGRESS_KEY, state.to_msgpack())
        else:
            state = Progress.from_msgpack(state, str(path))
            if state.fingerprint != fingerprint:
                self.env.close()
                raise OutputExistsError(
                    f"{path}: holds an interrupted conversion of different input or options; "
                    "rerun with --overwrite to start over"
                )
        self.state = state
        self.batch_bytes = batch_bytes
        self._pending: list[tuple[int, bytes | None, bytes | None, Row | Problem]] = []  # position, value, tail
        self._pending_bytes = 0

    @property
    def position(self) -> int:
        """The next source position this shard needs (everything before it is committed)."""
        return self.state.position

    def add(self, position: int, value: bytes | None, tail: bytes | None, row: Row | Problem) -> None:
        """Queue source ``position``: an encoded record (see ``format.encode_record``) and its :class:`Row`,
        or ``value=None`` and a :class:`Problem`."""
        if position != self.state.position + len(self._pending):
            raise ValueError(f"{self.path}: position {position} out of order")
        self._pending.append((position, value, tail, row))
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

    def _commit_pending(self, txn) -> Progress:
        state = self.state
        rows, problems, count = [], list(state.problems), state.count
        for position, value, tail, row in self._pending:
            if value is None:
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

    def rows(self) -> list[Row]:
        """The rows of every committed batch, in record order."""
        out: list[Row] = []
        with self.env.begin(db=self.meta) as txn:
            for b in range(self.state.batches):
                out.extend(decode_rows(txn.get(rows_key(b)), f"{self.path} batch {b}"))
        return out

    def rewind(self, first: int) -> None:
        """Forget everything from source position ``first`` on, so it is converted again (a file that failed
        may have been fixed, one converted may have changed): records stay in source order, so every
        position after it is converted again too."""
        kept = [row for row in self.rows() if row.position < first]

        def body(txn) -> Progress:
            for key in range(len(kept), self.state.count):
                txn.delete(encode_key(key), db=self.records)
                txn.delete(encode_key(key), db=self.tails)
            for b in range(self.state.batches):
                txn.delete(rows_key(b), db=self.meta)
            txn.put(rows_key(0), encode_rows(kept), db=self.meta)
            problems = tuple(p for p in self.state.problems if p.position < first)
            state = Progress(self.state.fingerprint, first, len(kept), 1, problems)
            txn.put(PROGRESS_KEY, state.to_msgpack(), db=self.meta)
            return state

        self.state = self._write(body)

    def finish(self, meta: ShardMeta, paths: bytes, targets: bytes, sizes: bytes) -> None:
        """Write metadata, source paths, the per-record arrays (encoded, see ``format.encode_array``), their
        checksums and the length key in one final commit, drop the progress state, sync."""
        self.flush()

        def body(txn) -> None:
            for b in range(self.state.batches):
                txn.delete(rows_key(b), db=self.meta)
            txn.delete(PROGRESS_KEY, db=self.meta)
            value = meta.to_msgpack()
            for key, data in ((META_KEY, value), (PATHS_KEY, paths), (TARGETS_KEY, targets), (SIZES_KEY, sizes)):
                txn.put(key, data, db=self.meta)
            txn.put(CHECKSUMS_KEY, encode_checksums(meta=value, paths=paths, targets=targets, sizes=sizes),
                    db=self.meta)
            txn.put(LENGTH_KEY, encode_length(meta.count), db=self.meta)

        self._write(body)
        self.complete = True
        self.env.sync(True)

    def close(self) -> None:
        self.env.close()


LMDB_FILES = ("data.mdb", "lock.mdb")


def owned_files(split_dir: Path) -> list[Path]:
    """Every file of the split's database, after proving each one is ours: ``data.mdb``/``lock.mdb`` directly
    in ``split_dir`` or in ``shard-SSS-of-KKK/`` folders, each ``data.mdb`` an LMDB environment with an
    imagenet_pack ``meta`` table. OutputExistsError naming what is not ours (nothing is deleted then)."""
    files, foreign = [], []
    for entry in sorted(split_dir.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and _is_shard_name(entry.name):
            inner = sorted(entry.iterdir())
            foreign += [f for f in inner if f.name not in LMDB_FILES or not f.is_file() or f.is_symlink()]
            files += [f for f in inner if f.name in LMDB_FILES and f.is_file() and not f.is_symlink()]
        elif entry.name in LMDB_FILES and entry.is_file() and not entry.is_symlink():
            files.append(entry)
        else:
            foreign.append(entry)
    foreign += [f.parent for f in files if f.name == "data.mdb" and not _written_by_us(f.parent)]
    if foreign:
        names = ", ".join(str(f) for f in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise OutputExistsError(f"{split_dir}: holds files imagenet-pack did not write ({names}); --overwrite "
                                "only removes its own databases: move them away or choose another DST")
    return files


def _is_shard_name(name: str) -> bool:
    parts = name.split("-")
    return len(parts) == 4 and parts[0] == "shard" and parts[2] == "of" and parts[1].isdigit() and parts[3].isdigit()


def _written_by_us(path: Path) -> bool:
    """Whether the LMDB environment at ``path`` has our ``meta`` table with metadata or conversion progress."""
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=3, subdir=True)
    except lmdb.Error:
        return False
    try:
        meta = env.open_db(META_DB, create=False)
        with env.begin(db=meta) as txn:
            value, progress = txn.get(META_KEY), txn.get(PROGRESS_KEY)
        return progress is not None or (value is not None and b"imagenet_pack" in value)
    except lmdb.Error:
        return False
    finally:
        env.close()


def remove_database(split_dir: Path, shard_dirs: list[Path] | None = None) -> None:
    """Delete a split's database (for --overwrite), or only ``shard_dirs`` of it: only files
    :func:`owned_files` proved ours, then the folders they leave empty."""
    if not split_dir.exists():
        return
    files = owned_files(split_dir)
    if shard_dirs is not None:
        files = [f for f in files if f.parent in shard_dirs]
    for f in files:
        f.unlink()
    for folder in sorted({f.parent for f in files} | {split_dir}, key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
