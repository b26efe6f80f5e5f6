"""Reading a finished shard's LMDB file ourselves, every step bounded by the file: no damaged byte can make
a process read past it, loop, or take garbage for a value, and no change to the file can kill it.

LMDB maps ``data.mdb`` and trusts it, and py-lmdb touches every page of a value before handing it over: a
damaged 32-bit value size in a leaf page makes it read gigabytes past the end of the file and die of a
signal, and so does any reader of a map whose file was truncated since (``cp`` of a smaller database over
it). Reading needs no writer, locks or transactions (the file no longer changes), so :class:`LmdbFile`
reads the B-tree directly with ``pread``, never through a map: meta pages, the main database, the named
databases, branch and leaf pages, overflow pages, each checked for what it claims (its page number, its
kind, node offsets and sizes inside the page, overflow spans inside the file, a bounded depth) before it is
followed; a read that comes back short (the file shrank) is an error. It keeps the file's identity (device,
inode, size, modification time) from when it was opened, so a caller can tell that the file was rewritten
or replaced since (:meth:`LmdbFile.changed`). py-lmdb writes the files
(:mod:`imagenet_pack.write.writer`); nothing reads them through it.

The format is LMDB's (liblmdb 0.9 ``mdb.c``: ``MDB_meta``, ``MDB_page``, ``MDB_node``; data version 1).
"""
from __future__ import annotations

import errno
import os
import struct
import zlib

from ..errors import CorruptRecordError, DamagedError, FormatError, NoTablesError

DATA_FILE = "data.mdb"
LOCK_FILE = "lock.mdb"
_MAGIC, _VERSION = 0xBEEFC0DE, 1
_PAGE = struct.Struct("<QHHHH")  # pgno, pad, flags, lower, upper (upper: overflow page count's low half)
_PAGE_HEADER = 16
_META = struct.Struct("<IIQQ48s48sQQ")  # magic, version, address, mapsize, free db, main db, last page, txn id
_DB = struct.Struct("<IHHQQQQQ")  # pad (page size in the free db), flags, depth, branch, leaf, overflow, entries, root
_NODE = struct.Struct("<HHHH")  # lo, hi, flags, key size
_BRANCH, _LEAF, _OVERFLOW = 0x01, 0x02, 0x04
_BIGDATA, _SUBDATA = 0x01, 0x02
_INVALID = (1 << 64) - 1
_MAX_DEPTH = 16
PAGE_SIZES = (4096, 8192, 16384, 32768, 65536)


def _header(data: bytes, where: str) -> tuple[int, int, int, int]:
    """(newest transaction id, last page in use, page size, main db root) of an LMDB file's two meta pages;
    FormatError if neither is valid. LMDB uses the meta page of the higher transaction id."""
    best = None
    for page in (0, 1):
        for size in PAGE_SIZES if page else (0,):
            offset = page * size
            if len(data) < offset + _PAGE_HEADER + _META.size:
                continue
            magic, version, _, _, free, main, last, txn = _META.unpack_from(data, offset + _PAGE_HEADER)
            psize = _DB.unpack(free)[0]
            if magic == _MAGIC and version == _VERSION and psize in PAGE_SIZES and (page == 0 or psize == size) \
                    and (best is None or txn > best[0]):
                best = (txn, last, psize, _DB.unpack(main)[7])
    if best is None:
        raise DamagedError(f"{where}: not an LMDB file (no valid meta page); {DamagedError.remedy}")
    return best


def holds_nothing(data: str) -> bool:
    """Whether the LMDB file ``data`` holds nothing anyone wrote: empty (LMDB was stopped while creating it)
    or with no transaction ever committed."""
    try:
        with open(data, "rb") as handle:
            head = handle.read(2 * 65536)
        return not head or _header(head, data)[0] == 0
    except (OSError, FormatError):
        return False


def descriptor_limit() -> str:
    """What to say when a process runs out of file descriptors: its limit, and what to do."""
    soft: int | str = "its"
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        pass
    return (f"this process has reached its limit of {soft} open file descriptors (ulimit -n): each shard read "
            "holds one; raise the limit (ulimit -n) or read a database of fewer shards")


# a data.mdb's st_dev, st_ino, st_size, st_mtime_ns; what its writer changes on every commit (the newest
# transaction id, last page and main root of its meta pages); and the CRC-32 of its metadata's checksums value
# (0 where it has none): a copy over the file that keeps its size and restores its mtime is still told apart,
# even one of a database of the very same structure
Identity = tuple[int, int, int, int, int, int, int, int]
SIGNATURE = (b"meta", b"checksums")  # the format's CRCs of a finished shard's metadata (format.CHECKSUMS_KEY)


def file_stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class LmdbFile:
    """A read-only, bounds-checked reader of one finished LMDB environment's ``data.mdb`` (``path`` is the
    environment's folder). ``identity`` is the file's as opened: FormatError at once if it is not
    ``expected``. Where the values of table ``KEPT`` are is looked up once (a handful of metadata keys, read in
    parts for every record)."""

    KEPT = b"meta"

    def __init__(self, path: str, expected: Identity | None = None):
        self.path = os.path.join(path, DATA_FILE)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise FormatError(f"{self.path}: cannot open it: {descriptor_limit()}") from None
            raise FormatError(f"{self.path}: cannot read it ({exc.strerror or exc})") from exc
        try:
            self._open(expected)
        except BaseException:
            os.close(self.fd)
            raise

    def _open(self, expected: Identity | None) -> None:
        st = os.fstat(self.fd)
        self.size = st.st_size
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)  # random access to a file larger than RAM
        self.txn, last, self.psize, main = _header(self._bytes(0, min(self.size, 2 * PAGE_SIZES[-1]), "the header"),
                                                   self.path)
        self._dbs: dict[bytes, int | None] = {}
        self._spans: dict[tuple[bytes, bytes], tuple[int, int]] = {}  # where the values of table KEPT are
        self.main, self.pages = main, last + 1
        if self.size < self.pages * self.psize:
            raise FormatError(f"{self.path}: file is {self.size} bytes but its header says "
                              f"{self.pages * self.psize}: the shard is truncated (an interrupted copy?); copy it "
                              "again or reconvert")
        self._signature: tuple[int, int] | None = None
        try:
            self._signature = self.locate(*SIGNATURE, f"{self.path} meta")
        except FormatError:  # no tables yet, or damage a read will name: no signature
            pass
        self.identity: Identity = (*file_stamp(st), self.txn, last, main, self._signed())
        if expected is not None and self.identity != expected:
            raise FormatError(changed_message(self.path))

    def changed(self) -> bool:
        """Whether the file at the path is no longer the one opened (rewritten, truncated, replaced, gone):
        its stat, then its meta pages read through this descriptor (a copy written over the same file)."""
        try:
            if file_stamp(os.stat(self.path)) != self.identity[:4]:
                return True
            head = os.pread(self.fd, 2 * self.psize, 0)
            txn, last, _, main = _header(head, self.path)
        except (OSError, FormatError):
            return True
        return (txn, last, main) != self.identity[4:7] or self._signed() != self.identity[7]

    def _signed(self) -> int:
        """CRC-32 of the bytes where the checksums value was found at open (0 without one), read now."""
        if self._signature is None:
            return 0
        offset, length = self._signature
        return zlib.crc32(os.pread(self.fd, length, offset))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _bytes(self, offset: int, size: int, where: str) -> bytes:
        """``size`` bytes at ``offset``; CorruptRecordError if the file ends first (it shrank since)."""
        try:
            data = os.pread(self.fd, size, offset)
        except OSError as exc:
            raise FormatError(f"{where}: cannot read {self.path} ({exc.strerror or exc})") from exc
        if len(data) != size:
            raise CorruptRecordError(f"{where}: {self.path} ends at byte {offset + len(data)}, inside what its "
                                     "header says it holds: the file was truncated or rewritten; open the database "
                                     "again, or copy it again")
        return data

    def _page(self, pgno: int, kinds: int, where: str) -> tuple[bytes, int, int, int]:
        """(page bytes, flags, lower, upper) of page ``pgno``, which must be one of ``kinds`` (an overflow page:
        its header only)."""
        if not 0 <= pgno < self.pages:
            raise CorruptRecordError(f"{where}: points to page {pgno}, past the {self.pages} pages in use; "
                                     f"{DamagedError.remedy}")
        page = self._bytes(pgno * self.psize, self.psize if kinds & (_BRANCH | _LEAF) else _PAGE_HEADER, where)
        stored, _, flags, lower, upper = _PAGE.unpack_from(page)
        if stored != pgno or not flags & kinds or flags & ~(_BRANCH | _LEAF | _OVERFLOW):
            raise CorruptRecordError(f"{where}: page {pgno} is not what the tree says it is (header: page "
                                     f"{stored}, flags {flags:#x}); {DamagedError.remedy}")
        if flags & (_BRANCH | _LEAF) and not _PAGE_HEADER <= lower <= upper <= self.psize:
            raise CorruptRecordError(f"{where}: page {pgno} has a damaged header; {DamagedError.remedy}")
        return page, flags, lower, upper

    def _node(self, page: bytes, index: int, upper: int, where: str) -> tuple[int, int, int, int]:
        """(lo | hi << 16, flags, key size, key offset in the page) of node ``index``."""
        at = struct.unpack_from("<H", page, _PAGE_HEADER + 2 * index)[0]
        if not upper <= at <= self.psize - _NODE.size:
            raise CorruptRecordError(f"{where}: a node pointer leaves its page; {DamagedError.remedy}")
        lo, hi, flags, ksize = _NODE.unpack_from(page, at)
        if at + _NODE.size + ksize > self.psize:
            raise CorruptRecordError(f"{where}: a key runs past its page; {DamagedError.remedy}")
        return lo | hi << 16, flags, ksize, at + _NODE.size

    @staticmethod
    def _key(page: bytes, node: tuple[int, int, int, int]) -> bytes:
        return page[node[3]:node[3] + node[2]]

    def _leaf(self, root: int, key: bytes | None, where: str) -> tuple[int, bytes, int, int] | None:
        """(page number, leaf page, its upper bound, index) of ``key`` in the tree at ``root`` (the last key for
        None), or None when absent."""
        pgno = root
        for _ in range(_MAX_DEPTH):
            page, flags, lower, upper = self._page(pgno, _BRANCH | _LEAF, where)
            count = (lower - _PAGE_HEADER) >> 1
            if flags & _LEAF:
                if key is None:
                    return (pgno, page, upper, count - 1) if count else None
                low, high = 0, count - 1
                while low <= high:
                    mid = (low + high) // 2
                    found = self._key(page, self._node(page, mid, upper, where))
                    if found == key:
                        return pgno, page, upper, mid
                    low, high = (mid + 1, high) if found < key else (low, mid - 1)
                return None
            if count == 0:
                raise CorruptRecordError(f"{where}: an empty branch page; {DamagedError.remedy}")
            child = count - 1
            if key is not None:  # the last child whose first key is <= key (child 0's key is empty: -inf)
                low, high, child = 1, count - 1, 0
                while low <= high:
                    mid = (low + high) // 2
                    if self._key(page, self._node(page, mid, upper, where)) <= key:
                        child, low = mid, mid + 1
                    else:
                        high = mid - 1
            node = self._node(page, child, upper, where)
            pgno = node[0] | node[1] << 32
        raise CorruptRecordError(f"{where}: the tree is deeper than {_MAX_DEPTH} levels (a loop); "
                                 f"{DamagedError.remedy}")

    def _value(self, pgno: int, page: bytes, upper: int, index: int, where: str) -> tuple[int, int, int]:
        """(file offset, length, node flags) of the value of node ``index`` on leaf page ``pgno``."""
        size, flags, ksize, key_at = self._node(page, index, upper, where)
        data_at = key_at + ksize
        if flags & _BIGDATA:
            if data_at + 8 > self.psize:
                raise CorruptRecordError(f"{where}: a value's page number runs past its page; "
                                         f"{DamagedError.remedy}")
            first = struct.unpack_from("<Q", page, data_at)[0]
            pages = struct.unpack_from("<I", self._page(first, _OVERFLOW, where)[0], 12)[0]
            if first + pages > self.pages or size + _PAGE_HEADER > pages * self.psize:
                raise CorruptRecordError(f"{where}: a value of {size} bytes does not fit the {pages} pages it "
                                         f"claims; {DamagedError.remedy}")
            return first * self.psize + _PAGE_HEADER, size, flags
        if data_at + size > self.psize:
            raise CorruptRecordError(f"{where}: a value of {size} bytes runs past its page; "
                                     f"{DamagedError.remedy}")
        return pgno * self.psize + data_at, size, flags

    def db(self, name: bytes, where: str) -> int | None:
        """The root page of the named database ``name`` (None when it holds nothing); FormatError if absent."""
        if name not in self._dbs:
            if self.main == _INVALID:
                raise NoTablesError(f"{self.path}: holds no named databases; not an imagenet_pack database")
            found = self._leaf(self.main, name, where)
            if found is None:
                raise FormatError(f"{self.path}: no {name.decode()!r} table; not an imagenet_pack database")
            offset, length, flags = self._value(*found, where)
            if not flags & _SUBDATA or length != _DB.size:
                raise FormatError(f"{self.path}: {name.decode()!r} is not a table; the shard is damaged")
            root = _DB.unpack(self._bytes(offset, length, where))[7]
            self._dbs[name] = None if root == _INVALID else root
        return self._dbs[name]

    def locate(self, name: bytes, key: bytes, where: str) -> tuple[int, int] | None:
        """(file offset, length) of the value under ``key`` in table ``name``, or None when absent."""
        if (name, key) in self._spans:
            return self._spans[name, key]
        root = self.db(name, where)
        found = None if root is None else self._leaf(root, key, where)
        if found is None:
            return None
        offset, length, flags = self._value(*found, where)
        if flags & ~_BIGDATA:
            raise CorruptRecordError(f"{where}: a value node has flags {flags:#x}; the shard is damaged")
        if name == self.KEPT:
            self._spans[name, key] = offset, length
        return offset, length

    def read(self, name: bytes, key: bytes, where: str) -> bytes | None:
        """The value under ``key`` in table ``name``, or None when absent."""
        found = self.locate(name, key, where)
        return None if found is None else self._bytes(*found, where)

    def read_at(self, offset: int, length: int, where: str) -> bytes:
        """``length`` bytes at ``offset`` (a part of a value :meth:`locate` found)."""
        return self._bytes(offset, length, where)

    def last_key(self, name: bytes, where: str) -> bytes | None:
        """The greatest key of table ``name`` (None when it is empty)."""
        root = self.db(name, where)
        found = None if root is None else self._leaf(root, None, where)
        if found is None:
            return None
        _, page, upper, index = found
        return self._key(page, self._node(page, index, upper, where))


def changed_message(path: str) -> str:
    """What a reader says when a database file is no longer the one it opened."""
    return (f"{path}: the database changed since it was opened here (rewritten, replaced, e.g. by `imagenet-pack "
            "convert --overwrite`, or truncated); open it again")
