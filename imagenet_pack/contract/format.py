"""The on-disk format, in one place: keys, records and metadata (specified in docs/FORMAT.md).

A split is one or more LMDB environments (shards, named by :mod:`imagenet_pack.layout`). Each holds three
named databases:

* ``records``: key = the record's position in the shard as an 8-byte big-endian unsigned integer (so byte
  order is index order); value = a msgpack map ``{image, size, target, height, width, crc32}`` holding the
  encoded JPEG bytes exactly as stored; ``crc32`` covers the image bytes *and* every other field, so no byte
  of a record can change without the reader noticing.
* ``tails``: when a record's value would leave most of its last LMDB overflow page empty, its last bytes
  (at most ``TAIL_MAX``) are stored here under the same key instead, where they pack densely into leaf
  pages; ``image`` then holds the first bytes and ``size`` the full length.
* ``meta``: ``meta`` = a msgpack map describing the shard and the split (:class:`ShardMeta`); ``targets``,
  ``sizes`` and ``stamps`` = plain little-endian arrays (class index and stored image size per record; source
  size and mtime per source item), read in place; ``paths`` = the records' source paths, newline-joined;
  ``checksums`` = CRC-32 of those five values; ``length`` = the record count, written in the very last commit,
  so its presence marks a complete shard. While a conversion runs, ``progress`` and ``rows/NNNNNNNN`` hold its
  resumable state (:mod:`imagenet_pack.write.state`; removed at the end).

Nothing is pickled: msgpack maps of ints, strings, byte strings and lists, each checked when read back.
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from ..errors import CorruptRecordError, DamagedError, FormatError

FORMAT_NAME = "imagenet_pack"
FORMAT_VERSION = 3
RECORDS_DB, TAILS_DB, META_DB = b"records", b"tails", b"meta"  # the three named databases
# keys of the meta database: a finished shard's, then a conversion's while it runs
META_KEY, LENGTH_KEY, PATHS_KEY, CHECKSUMS_KEY = b"meta", b"length", b"paths", b"checksums"
TARGETS_KEY, SIZES_KEY, STAMPS_KEY = b"targets", b"sizes", b"stamps"
PROGRESS_KEY, ROWS_PREFIX = b"progress", b"rows/"

MAX_SHARDS = 999  # shards of one split: named shard-SSS-of-KKK (imagenet_pack.layout), three digits each
KEY_SIZE = 8
_KEY = struct.Struct(">Q")
_FIELDS = struct.Struct("<QiII")  # size, target, height, width: what the record's CRC covers after the image
# LMDB stores a value in the leaf page when 8 (node header) + 8 (key) + value <= 2040 on 4 KiB pages, and in
# ceil((value + 16) / page) overflow pages otherwise (mdb.c: me_nodemax, OVPAGES, PAGEHDRSZ).
_PAGE_HEADER = 16
TAIL_MAX = 2000
STAMPS_DTYPE = "<i8"  # (size in bytes, mtime in ns) per source item


def encode_key(index: int) -> bytes:
    return _KEY.pack(index)  # fixed width, big-endian: LMDB's byte order is numeric order


def decode_key(key: bytes | memoryview) -> int:
    if len(key) != KEY_SIZE:
        raise CorruptRecordError(f"a record key is {len(key)} bytes, not {KEY_SIZE}; the database is damaged")
    return _KEY.unpack(bytes(key))[0]


@dataclass(frozen=True)
class Record:
    """One stored sample: the encoded image, its class index and the stored image's size."""

    image: bytes
    target: int
    height: int
    width: int


def record_crc(image_crc: int, size: int, target: int, height: int, width: int) -> int:
    """The record's ``crc32``: CRC-32 of the image bytes continued over ``size, target, height, width``
    (``<QiII``), so ``image_crc`` (of the image alone) is all a worker has to compute."""
    return zlib.crc32(_FIELDS.pack(size, target, height, width), image_crc)


def _pack_record(record: Record, image: bytes | memoryview, crc: int) -> bytes:
    return msgpack.packb(
        {"image": image, "size": len(record.image), "target": record.target, "height": record.height,
         "width": record.width, "crc32": crc},
        use_bin_type=True,
    )


def encode_record(record: Record, page_size: int | None = None, *, image_crc: int | None = None
                  ) -> tuple[bytes, bytes | None]:
    """The record's value, and the tail to store in ``tails`` (None when the value is stored whole).

    With ``page_size`` given, the image is cut so the value exactly fills whole overflow pages, provided the
    rest is small enough to sit densely in a leaf page. ``image_crc`` is the image's CRC-32 when already known.
    """
    image_crc = zlib.crc32(record.image) if image_crc is None else image_crc
    crc = record_crc(image_crc, len(record.image), record.target, record.height, record.width)
    if page_size is None:
        return _pack_record(record, record.image, crc), None
    size = len(record.image)
    overhead = len(_pack_record(record, b"", crc)) - 2 + _bin_header(size)  # all but the image bytes
    pages = (overhead + size + _PAGE_HEADER) // page_size
    cut = pages * page_size - _PAGE_HEADER - overhead  # image bytes that fill those pages exactly
    if pages == 0 or not 0 < size - cut <= TAIL_MAX:
        return _pack_record(record, record.image, crc), None
    image = memoryview(record.image)
    return _pack_record(record, image[:cut], crc), bytes(image[cut:])


def _bin_header(size: int) -> int:  # msgpack's bin8, bin16, bin32 headers
    return 2 if size < 1 << 8 else 3 if size < 1 << 16 else 5


def checked_int(value: Any, name: str, low: int = 0, high: int = (1 << 63) - 1) -> int:
    """``value`` if it is an int in ``[low, high]`` (not a bool, a float or anything else); else ValueError."""
    if type(value) is not int or not low <= value <= high:
        bounds = f">= {low}" if high == (1 << 63) - 1 else f"in {low}..{high}"
        raise ValueError(f"{name} is {value!r}, not an integer {bounds}")
    return value


def decode_record(value: bytes | memoryview, where: str, tail: Callable[[], bytes | None] | None = None) -> Record:
    """Decode and check one record; ``tail()`` fetches its tail when it has one; ``where`` names it."""
    try:
        fields = msgpack.unpackb(value, raw=False)
        if not isinstance(fields, dict) or len(fields) != 6:
            raise ValueError("not a map of the six record fields")
        image, crc = fields["image"], checked_int(fields["crc32"], "crc32", 0, 0xFFFFFFFF)
        size = checked_int(fields["size"], "size", 1, 1 << 32)
        target = checked_int(fields["target"], "target", 0, 0x7FFFFFFF)
        height, width = (checked_int(fields[k], k, 1, 0xFFFFFFFF) for k in ("height", "width"))
        if not isinstance(image, bytes) or len(image) > size:
            raise ValueError("image is not a byte string of at most its size")
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptRecordError(f"{where}: not a valid record ({exc}); {DamagedError.remedy}") from exc
    if len(image) < size:
        rest = tail() if tail is not None else None
        if rest is None:
            raise CorruptRecordError(f"{where}: the last {size - len(image)} image bytes (tails table) are "
                                     f"missing; {DamagedError.remedy}")
        image = image + bytes(rest)
    if len(image) != size or record_crc(zlib.crc32(image), size, target, height, width) != crc:
        raise CorruptRecordError(f"{where}: checksum mismatch, the stored record is damaged; "
                                 f"{DamagedError.remedy}")
    return Record(image, target, height, width)


def encode_arrays(targets: np.ndarray, sizes: np.ndarray, stamps: np.ndarray, num_classes: int
                  ) -> tuple[dict[bytes, bytes], str, str]:
    """The per-record arrays as stored (plain little-endian, readable in place by any language) and the types
    chosen for them, which the metadata records: the narrowest that hold every value (int16 targets up to
    32,767 classes; uint16 sizes when every side fits, as ImageNet's do)."""
    targets_dtype = "<i2" if num_classes <= 0x7FFF else "<i4"
    sizes_dtype = "<u2" if not sizes.size or int(sizes.max()) <= 0xFFFF else "<u4"
    arrays = {TARGETS_KEY: np.ascontiguousarray(targets, targets_dtype).tobytes(),
              SIZES_KEY: np.ascontiguousarray(sizes, sizes_dtype).tobytes(),
              STAMPS_KEY: np.ascontiguousarray(stamps, STAMPS_DTYPE).tobytes()}
    return arrays, targets_dtype, sizes_dtype


def decode_array(data: bytes | memoryview | None, dtype: str, count: int, where: str, name: str) -> np.ndarray:
    """``count`` values of ``dtype`` viewing ``data`` (no copy: a buffer from LMDB's map stays shared)."""
    if data is None:
        raise DamagedError(f"{where}: no {name!r} key; {DamagedError.remedy}")
    if len(data) != count * np.dtype(dtype).itemsize:
        raise DamagedError(f"{where}: {name!r} holds {len(data)} bytes, expected {count} values of {dtype}; "
                          f"{DamagedError.remedy}")
    return np.frombuffer(data, dtype=dtype)


def text(value: str) -> str:  # what msgpack can store: a file name's bytes that are not UTF-8 escaped
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def path_bytes(path: str) -> bytes:
    """A source path as stored: its bytes (UTF-8 for ordinary names; a name's own bytes where it is not)."""
    return path.encode("utf-8", "surrogateescape")


def path_text(data: bytes) -> str:  # the inverse of path_bytes
    return bytes(data).decode("utf-8", "surrogateescape")


def path_problem(path: str) -> str | None:
    """Why a source path cannot be stored (a newline separates stored paths), or None."""
    return "its name contains a newline, which the format cannot store; rename it" if "\n" in path else None


@dataclass(frozen=True)
class ShardMeta:
    """The ``meta`` value of one shard: its place in the split and the split's classes. The one owner of the
    metadata: :meth:`to_msgpack` writes it, :meth:`from_msgpack` reads and checks it. A shard does not store
    its global start: a reader adds up the counts of the shards before it."""

    split: str
    shard: int
    num_shards: int
    count: int  # records in this shard
    items: int  # source items of its range (records + skipped): the length of ``stamps``
    wnids: tuple[str, ...]  # the database's class list (the same in every split)
    classes: tuple[tuple[str, ...], ...]
    targets_dtype: str = "<i2"  # of the ``targets`` key: class index per record
    sizes_dtype: str = "<u2"  # of the ``sizes`` key: the stored image's (height, width) per record
    fixed: tuple[tuple[str, str], ...] = ()  # (source path, what was done) for re-encoded inputs
    skipped: tuple[tuple[str, str], ...] = ()  # (source path, why) for inputs not stored (--skip-bad)
    max_side: int | None = None  # write-time downscaling, if any (longer side)
    short_side: int | None = None  # (shorter side, torchvision's Resize)
    quality: int | None = None  # their JPEG quality
    source: str = ""
    fingerprint: str = ""  # identifies input and options: resuming over other input is refused
    resumed: bool = False  # finished by a resumed run
    created: str = ""

    def to_msgpack(self) -> bytes:
        pairs = lambda entries: [[path_bytes(p), text(r)] for p, r in entries]  # noqa: E731
        return msgpack.packb({
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "split": self.split, "shard": self.shard,
            "num_shards": self.num_shards, "count": self.count, "items": self.items,
            "wnids": list(self.wnids), "classes": [list(c) for c in self.classes],
            "targets_dtype": self.targets_dtype, "sizes_dtype": self.sizes_dtype,
            "fixed": pairs(self.fixed), "skipped": pairs(self.skipped),
            "encoding": {"max_side": self.max_side, "short_side": self.short_side, "quality": self.quality},
            "source": text(self.source), "fingerprint": self.fingerprint, "resumed": self.resumed,
            "created": self.created,
        }, use_bin_type=True)

    @classmethod
    def from_msgpack(cls, value: bytes, where: str) -> ShardMeta:
        """Decode and check one shard's metadata; FormatError naming ``where`` for anything malformed."""
        try:
            meta = msgpack.unpackb(value, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise DamagedError(f"{where}: metadata is not valid msgpack ({exc}); {DamagedError.remedy}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise FormatError(f"{where}: not an {FORMAT_NAME} database (format field is {found!r})")
        version = meta.get("version")
        if version != FORMAT_VERSION:
            raise FormatError(
                f"{where}: format version {version!r} is not supported by this imagenet_pack "
                f"(it reads version {FORMAT_VERSION}): upgrade imagenet_pack, or convert it again with --overwrite")
        try:
            return cls._checked(meta)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DamagedError(f"{where}: metadata field missing or malformed ({exc}); {DamagedError.remedy}") from exc

    @classmethod
    def _checked(cls, meta: dict) -> ShardMeta:
        def string(v: Any, name: str) -> str:
            if not isinstance(v, str):
                raise ValueError(f"{name} is {type(v).__name__}, not a string")
            return v

        def optional(v: Any, name: str) -> int | None:
            return None if v is None else checked_int(v, name, 1, 1 << 31)

        def pairs(v: Any, name: str) -> tuple[tuple[str, str], ...]:
            out = []
            for path, reason in v:
                if not isinstance(path, bytes):
                    raise ValueError(f"an entry of {name} is not a (path bytes, reason) pair")
                out.append((path_text(path), string(reason, name)))
            return tuple(out)

        dtypes = (string(meta["targets_dtype"], "targets_dtype"), string(meta["sizes_dtype"], "sizes_dtype"))
        if dtypes[0] not in ("<i2", "<i4") or dtypes[1] not in ("<u2", "<u4"):
            raise ValueError(f"array types {dtypes}")
        num_shards = checked_int(meta["num_shards"], "num_shards", 1, MAX_SHARDS)
        count = checked_int(meta["count"], "count", 0, 1 << 40)
        encoding = meta["encoding"]
        return cls(
            split=string(meta["split"], "split"), shard=checked_int(meta["shard"], "shard", 0, num_shards - 1),
            num_shards=num_shards, count=count, items=checked_int(meta["items"], "items", count, 1 << 40),
            wnids=tuple(string(w, "wnid") for w in meta["wnids"]),
            classes=tuple(tuple(string(n, "class name") for n in c) for c in meta["classes"]),
            targets_dtype=dtypes[0], sizes_dtype=dtypes[1],
            fixed=pairs(meta["fixed"], "fixed"), skipped=pairs(meta["skipped"], "skipped"),
            max_side=optional(encoding["max_side"], "max_side"),
            short_side=optional(encoding["short_side"], "short_side"),
            quality=optional(encoding["quality"], "quality"), source=string(meta["source"], "source"),
            fingerprint=string(meta["fingerprint"], "fingerprint"), resumed=meta["resumed"] is True,
            created=string(meta["created"], "created"))


def encode_paths(paths: list[str]) -> bytes:
    """Relative source paths as one blob, newline-separated: each name's bytes (see :func:`path_bytes`)."""
    for path in paths:
        if path_problem(path):
            raise FormatError(f"source path {path!r}: {path_problem(path)}")
    return b"\n".join(path_bytes(p) for p in paths)


def decode_paths(blob: bytes) -> list[str]:
    return path_text(blob).split("\n") if blob else []


def encode_checksums(**values: bytes) -> bytes:
    """The ``checksums`` value: CRC-32 of the ``meta``, ``paths``, ``targets``, ``sizes`` and ``stamps``
    values, so damaged metadata is detected."""
    return msgpack.packb({name: zlib.crc32(value) for name, value in values.items()})


def check_checksum(checksums: bytes | None, name: str, value: bytes | np.ndarray, where: str) -> None:
    """FormatError unless ``value`` (the ``name`` key) matches its CRC-32 in the ``checksums`` value."""
    try:
        expected = msgpack.unpackb(checksums, raw=False)[name] if checksums is not None else None
    except (KeyError, TypeError, ValueError, msgpack.UnpackException):
        expected = None
    if type(expected) is not int:
        raise DamagedError(f"{where}: no checksum for its {name}; {DamagedError.remedy}")
    if zlib.crc32(bytes(value)) != expected:
        raise DamagedError(f"{where}: its {name} fail their checksum; {DamagedError.remedy}")
