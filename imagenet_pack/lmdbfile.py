"""Reading a finished shard's LMDB file ourselves, every step bounded by the file: no damaged byte can make
a process read past it (a SIGBUS), loop, or take garbage for a value.

LMDB maps ``data.mdb`` and trusts it, and py-lmdb touches every page of a value before handing it over: a
damaged 32-bit value size in a leaf page makes it read gigabytes past the end of the file and die of a
signal. Reading needs no writer, locks or transactions (the file no longer changes), so :class:`LmdbFile`
reads the B-tree directly from a read-only ``mmap`` of the file (Python's mmap refuses to read past its end):
meta pages, the main database, the named databases, branch and leaf pages, overflow pages, each checked for
what it claims (its page number, its kind, node offsets and sizes inside the page, overflow spans inside the
file, a bounded depth) before it is followed. Values are zero-copy views of the map. py-lmdb writes the
files (:mod:`imagenet_pack.convert.writer`); nothing reads them through it.

The format is LMDB's (liblmdb 0.9 ``mdb.c``: ``MDB_meta``, ``MDB_page``, ``MDB_node``; data version 1).
"""
from __future__ import annotations

import mmap
import os
import struct

from .errors import CorruptRecordError, FormatError

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


def _header(data: bytes | mmap.mmap, where: str) -> tuple[int, int, int, int]:
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
        raise FormatError(f"{where}: not an LMDB file (no valid meta page); the shard is damaged, reconvert it")
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


class LmdbFile:
    """A read-only, bounds-checked view of one finished LMDB environment's ``data.mdb``."""

    def __init__(self, path: str):
        self.path = os.path.join(path, DATA_FILE)
        try:
            with open(self.path, "rb") as handle:
                self.size = os.fstat(handle.fileno()).st_size
                self.map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
        except (OSError, ValueError) as exc:
            raise FormatError(f"{self.path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from exc
        if self.size and hasattr(self.map, "madvise"):
            self.map.madvise(mmap.MADV_RANDOM)  # random access to a file larger than RAM: no readahead
        self.txn, last, self.psize, main = _header(self.map, self.path)
        self.pages = last + 1
        if self.size < self.pages * self.psize:
            raise FormatError(f"{self.path}: file is {self.size} bytes but its header says "
                              f"{self.pages * self.psize}: the shard is truncated (an interrupted copy?); copy it "
                              "again or reconvert")
        self.main = main
        self._dbs: dict[bytes, int | None] = {}

    def close(self) -> None:
        if isinstance(self.map, mmap.mmap):
            self.map.close()

    def _page(self, pgno: int, kinds: int, where: str) -> tuple[int, int, int, int]:
        """(offset, flags, lower, upper) of page ``pgno``, which must be one of ``kinds``."""
        if not 0 <= pgno < self.pages:
            raise CorruptRecordError(f"{where}: points to page {pgno}, past the {self.pages} pages in use; the "
                                     "shard is damaged, run `imagenet-pack verify` and reconvert")
        offset = pgno * self.psize
        stored, _, flags, lower, upper = _PAGE.unpack_from(self.map, offset)
        if stored != pgno or not flags & kinds or flags & ~(_BRANCH | _LEAF | _OVERFLOW):
            raise CorruptRecordError(f"{where}: page {pgno} is not what the tree says it is (header: page "
                                     f"{stored}, flags {flags:#x}); the shard is damaged, reconvert it")
        if flags & (_BRANCH | _LEAF) and not _PAGE_HEADER <= lower <= upper <= self.psize:
            raise CorruptRecordError(f"{where}: page {pgno} has a damaged header; the shard is damaged, reconvert it")
        return offset, flags, lower, upper

    def _node(self, offset: int, index: int, upper: int, where: str) -> tuple[int, int, int, int, int]:
        """(node offset in the file, lo | hi << 16, flags, key size, key offset) of node ``index``."""
        at = struct.unpack_from("<H", self.map, offset + _PAGE_HEADER + 2 * index)[0]
        if not upper <= at <= self.psize - _NODE.size:
            raise CorruptRecordError(f"{where}: a node pointer leaves its page; the shard is damaged, reconvert it")
        lo, hi, flags, ksize = _NODE.unpack_from(self.map, offset + at)
        if at + _NODE.size + ksize > self.psize:
            raise CorruptRecordError(f"{where}: a key runs past its page; the shard is damaged, reconvert it")
        return offset + at, lo | hi << 16, flags, ksize, offset + at + _NODE.size

    def _key(self, node: tuple[int, int, int, int, int]) -> bytes:
        return self.map[node[4]:node[4] + node[3]]

    def _leaf(self, root: int, key: bytes | None, where: str) -> tuple[int, int, int] | None:
        """(page offset, number of keys, index) of ``key`` in the tree at ``root`` (the last key for None), or
        None when absent."""
        pgno = root
        for _ in range(_MAX_DEPTH):
            offset, flags, lower, upper = self._page(pgno, _BRANCH | _LEAF, where)
            count = (lower - _PAGE_HEADER) >> 1
            if flags & _LEAF:
                if key is None:
                    return (offset, count, count - 1) if count else None
                low, high = 0, count - 1
                while low <= high:
                    mid = (low + high) // 2
                    found = self._key(self._node(offset, mid, upper, where))
                    if found == key:
                        return offset, count, mid
                    low, high = (mid + 1, high) if found < key else (low, mid - 1)
                return None
            if count == 0:
                raise CorruptRecordError(f"{where}: an empty branch page; the shard is damaged, reconvert it")
            child = count - 1
            if key is not None:  # the last child whose first key is <= key (child 0's key is empty: -inf)
                low, high, child = 1, count - 1, 0
                while low <= high:
                    mid = (low + high) // 2
                    if self._key(self._node(offset, mid, upper, where)) <= key:
                        child, low = mid, mid + 1
                    else:
                        high = mid - 1
            node = self._node(offset, child, upper, where)
            pgno = node[1] | node[2] << 32
        raise CorruptRecordError(f"{where}: the tree is deeper than {_MAX_DEPTH} levels (a loop); the shard is "
                                 "damaged, reconvert it")

    def _value(self, offset: int, index: int, upper: int, where: str) -> tuple[int, int, int]:
        """(file offset, length, node flags) of the value of node ``index`` on the leaf page at ``offset``."""
        node_at, size, flags, ksize, key_at = self._node(offset, index, upper, where)
        data_at = key_at + ksize
        if flags & _BIGDATA:
            if data_at + 8 > offset + self.psize:
                raise CorruptRecordError(f"{where}: a value's page number runs past its page; the shard is damaged")
            pgno = struct.unpack_from("<Q", self.map, data_at)[0]
            first, _, _, _ = self._page(pgno, _OVERFLOW, where)
            pages = struct.unpack_from("<I", self.map, first + 12)[0]
            if pgno + pages > self.pages or size + _PAGE_HEADER > pages * self.psize:
                raise CorruptRecordError(f"{where}: a value of {size} bytes does not fit the {pages} pages it "
                                         "claims; the shard is damaged, run `imagenet-pack verify` and reconvert")
            return first + _PAGE_HEADER, size, flags
        if data_at + size > offset + self.psize:
            raise CorruptRecordError(f"{where}: a value of {size} bytes runs past its page; the shard is damaged, "
                                     "run `imagenet-pack verify` and reconvert")
        return data_at, size, flags

    def db(self, name: bytes, where: str) -> int | None:
        """The root page of the named database ``name`` (None when it holds nothing); FormatError if absent."""
        if name not in self._dbs:
            if self.main == _INVALID:
                raise FormatError(f"{self.path}: holds no named databases; not an imagenet_pack database")
            found = self._leaf(self.main, name, where)
            if found is None:
                raise FormatError(f"{self.path}: no {name.decode()!r} table; not an imagenet_pack database")
            offset, _, index = found
            at, length, flags = self._value(offset, index, self._upper(offset), where)
            if not flags & _SUBDATA or length != _DB.size:
                raise FormatError(f"{self.path}: {name.decode()!r} is not a table; the shard is damaged")
            root = _DB.unpack_from(self.map, at)[7]
            self._dbs[name] = None if root == _INVALID else root
        return self._dbs[name]

    def _upper(self, offset: int) -> int:
        return _PAGE.unpack_from(self.map, offset)[4]

    def locate(self, name: bytes, key: bytes, where: str) -> tuple[int, int] | None:
        """(file offset, length) of the value under ``key`` in table ``name``, or None when absent."""
        root = self.db(name, where)
        found = None if root is None else self._leaf(root, key, where)
        if found is None:
            return None
        offset, _, index = found
        at, length, flags = self._value(offset, index, self._upper(offset), where)
        if flags & ~_BIGDATA:
            raise CorruptRecordError(f"{where}: a value node has flags {flags:#x}; the shard is damaged")
        return at, length

    def get(self, name: bytes, key: bytes, where: str) -> memoryview | None:
        """The value under ``key`` in table ``name`` as a view of the map (no copy), or None when absent."""
        found = self.locate(name, key, where)
        return None if found is None else memoryview(self.map)[found[0]:found[0] + found[1]]

    def read(self, name: bytes, key: bytes, where: str) -> bytes | None:
        """The value under ``key`` in table ``name``, copied out of the map, or None when absent."""
        found = self.locate(name, key, where)
        return None if found is None else self.map[found[0]:found[0] + found[1]]

    def last_key(self, name: bytes, where: str) -> bytes | None:
        """The greatest key of table ``name`` (None when it is empty)."""
        root = self.db(name, where)
        found = None if root is None else self._leaf(root, None, where)
        return None if found is None else self._key(self._node(found[0], found[2], self._upper(found[0]), where))
