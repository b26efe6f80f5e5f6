"""The on-disk format, in one place: keys, records and metadata (specified in docs/FORMAT.md).

A split is one or more LMDB environments (shards). Each holds three named databases:

* ``records``: key = the record's position in the shard as an 8-byte big-endian unsigned integer (so byte
  order is index order, unlike decimal strings); value = a msgpack map ``{image, size, target, height,
  width, crc32}`` holding the encoded JPEG bytes exactly as stored and a CRC-32 of them.
* ``tails``: when a record's value would leave most of its last LMDB overflow page empty, its last bytes
  (fewer than ``TAIL_MAX``) are stored here under the same key instead, where they pack densely into leaf
  pages; ``image`` then holds the first bytes and ``size`` the full length. This keeps the database within
  ~1% of the JPEG bytes instead of wasting half a page (2 KB) per image.
* ``meta``: ``meta`` = a msgpack map describing the shard and the split; ``targets`` and ``sizes`` = plain
  little-endian arrays of every record's class index and original size (read in place from the map, so every
  process shares the same pages); ``paths`` = the records' source paths, newline-joined UTF-8 (its own key:
  opening a dataset never touches it); ``checksums`` = CRC-32 of those four values; ``length`` = the record
  count as an 8-byte big-endian integer, written in the very last commit, so its presence marks a complete
  shard.
  While a conversion runs, ``progress`` and ``rows/NNNNNNNN`` hold its resumable state (removed at the end).

Nothing is pickled: msgpack maps of ints, strings, byte strings and lists only.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Callable, NamedTuple

import msgpack
import numpy as np

from .errors import CorruptRecordError, FormatError

FORMAT_NAME = "imagenet_pack"
FORMAT_VERSION = 2
RECORDS_DB = b"records"
TAILS_DB = b"tails"
META_DB = b"meta"
META_KEY = b"meta"
LENGTH_KEY = b"length"
PATHS_KEY = b"paths"
TARGETS_KEY = b"targets"
SIZES_KEY = b"sizes"
CHECKSUMS_KEY = b"checksums"
PROGRESS_KEY = b"progress"
ROWS_PREFIX = b"rows/"

_KEY = struct.Struct(">Q")
# LMDB stores a value in the leaf page when 8 (node header) + 8 (key) + value <= 2040 on 4 KiB pages, and in
# ceil((value + 16) / page) overflow pages otherwise (mdb.c: me_nodemax, OVPAGES, PAGEHDRSZ).
_PAGE_HEADER = 16
TAIL_MAX = 2000


def encode_key(index: int) -> bytes:
    """Fixed-width big-endian key: LMDB's byte order equals numeric order."""
    return _KEY.pack(index)


def decode_key(key: bytes) -> int:
    return _KEY.unpack(bytes(key))[0]


encode_length = encode_key
decode_length = decode_key


@dataclass(frozen=True)
class Record:
    """One stored sample: the encoded image, its class index and the stored image's size."""

    image: bytes
    target: int
    height: int
    width: int


def _pack_record(record: Record, image: bytes | memoryview, crc: int) -> bytes:
    return msgpack.packb(
        {"image": image, "size": len(record.image), "target": record.target, "height": record.height,
         "width": record.width, "crc32": crc},
        use_bin_type=True,
    )


def encode_record(record: Record, page_size: int | None = None, *, crc: int | None = None
                  ) -> tuple[bytes, bytes | None]:
    """The record's value, and the tail to store in ``tails`` (None when the value is stored whole).

    With ``page_size`` given, the image is cut so the value exactly fills whole overflow pages, provided the
    rest is small enough to sit densely in a leaf page. ``crc`` is the image's CRC-32 when already known.
    """
    crc = zlib.crc32(record.image) if crc is None else crc
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


def _bin_header(size: int) -> int:
    """Bytes of msgpack's bin header for a ``size``-byte payload (bin8, bin16, bin32)."""
    return 2 if size < 1 << 8 else 3 if size < 1 << 16 else 5


def decode_record(value: bytes | memoryview, where: str, tail: Callable[[], bytes | None] | None = None) -> Record:
    """Decode and check one record; ``tail()`` fetches its tail when it has one; ``where`` names it."""
    try:
        fields = msgpack.unpackb(value, raw=False)
        image, crc, size = fields["image"], fields["crc32"], fields["size"]
        if len(image) < size:
            rest = tail() if tail is not None else None
            if rest is None:
                raise CorruptRecordError(f"{where}: the last {size - len(image)} image bytes (tails table) are "
                                         "missing; the database is damaged, reconvert it")
            image = image + bytes(rest)
        record = Record(image, int(fields["target"]), int(fields["height"]), int(fields["width"]))
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptRecordError(f"{where}: not a valid record ({exc}); the database is damaged, reconvert it") from exc
    if not isinstance(image, bytes) or len(image) != size or zlib.crc32(image) != crc:
        raise CorruptRecordError(
            f"{where}: checksum mismatch, the stored image bytes are damaged; "
            "run `imagenet-pack verify` and reconvert the database"
        )
    return record


def target_dtype(num_classes: int) -> str:
    """The narrowest little-endian type that holds every class index: int16 up to 32,767 classes."""
    return "<i2" if num_classes <= 0x7FFF else "<i4"


def size_dtype(sizes: np.ndarray) -> str:
    """uint16 when every height and width fits (ImageNet's do), else uint32."""
    return "<u2" if not sizes.size or int(sizes.max()) <= 0xFFFF else "<u4"


def encode_array(values: np.ndarray, dtype: str) -> bytes:
    """A plain little-endian array: what ``targets`` and ``sizes`` hold, readable in place by any language."""
    return np.ascontiguousarray(values, dtype=dtype).tobytes()


def decode_array(data: bytes | memoryview | None, dtype: str, count: int, where: str, name: str) -> np.ndarray:
    """``count`` values of ``dtype`` viewing ``data`` (no copy: a buffer from LMDB's map stays shared)."""
    if data is None:
        raise FormatError(f"{where}: no {name!r} key; the database is damaged, reconvert it")
    array = np.frombuffer(data, dtype=dtype)
    if array.size != count:
        raise FormatError(f"{where}: {name!r} holds {array.size} values, expected {count}; reconvert the database")
    return array


@dataclass(frozen=True)
class ShardMeta:
    """The ``meta`` value of one shard: its place in the split and the split's classes.

    The one owner of the metadata: the converter builds it, :meth:`to_msgpack` writes it, :meth:`from_msgpack`
    reads and checks it; everyone else uses the attributes. The per-record arrays (``targets``, ``sizes``)
    are keys of their own, read in place from the map (see :func:`decode_array`). A shard does not store its
    global start: shards of a split are numbered, and a reader adds up the counts of the shards before it,
    so hosts can write different shards of one database independently.
    """

    split: str
    shard: int
    num_shards: int
    count: int  # records in this shard
    wnids: tuple[str, ...]
    classes: tuple[tuple[str, ...], ...]
    targets_dtype: str = "<i2"  # of the ``targets`` key: class index per record
    sizes_dtype: str = "<u2"  # of the ``sizes`` key: original (height, width) per record
    fixed: tuple[tuple[str, str], ...] = ()  # (source path, what was done) for re-encoded inputs
    skipped: tuple[tuple[str, str], ...] = ()  # (source path, why) for inputs not stored (--skip-bad)
    stamps_crc32: int = 0  # CRC-32 of the (size, mtime) of every input file of the shard's range
    max_side: int | None = None  # write-time downscaling, if any
    quality: int | None = None  # its JPEG quality
    source: str = ""
    fingerprint: str = ""  # identifies input and options: resuming over other input is refused
    resumed: bool = False  # finished by a resumed run
    created: str = ""

    def to_msgpack(self) -> bytes:
        return msgpack.packb({
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "split": self.split, "shard": self.shard,
            "num_shards": self.num_shards, "count": self.count,
            "wnids": list(self.wnids), "classes": [list(c) for c in self.classes],
            "targets_dtype": self.targets_dtype, "sizes_dtype": self.sizes_dtype,
            "fixed": [list(f) for f in self.fixed], "skipped": [list(f) for f in self.skipped],
            "stamps_crc32": self.stamps_crc32, "encoding": {"max_side": self.max_side, "quality": self.quality},
            "source": self.source, "fingerprint": self.fingerprint, "resumed": self.resumed, "created": self.created,
        }, use_bin_type=True)

    @classmethod
    def from_msgpack(cls, value: bytes, where: str) -> ShardMeta:
        """Decode and check one shard's metadata; FormatError naming ``where`` for anything malformed."""
        try:
            meta = msgpack.unpackb(value, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise FormatError(f"{where}: metadata is not valid msgpack ({exc}); reconvert the database") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise FormatError(f"{where}: not an {FORMAT_NAME} database (format field is {found!r})")
        version = meta.get("version")
        if version != FORMAT_VERSION:
            raise FormatError(
                f"{where}: format version {version!r} is not supported by this imagenet_pack "
                f"(it reads version {FORMAT_VERSION}); upgrade imagenet_pack or reconvert the database")
        try:
            encoding = meta["encoding"]
            dtypes = (str(meta["targets_dtype"]), str(meta["sizes_dtype"]))
            if dtypes[0] not in ("<i2", "<i4") or dtypes[1] not in ("<u2", "<u4"):
                raise ValueError(f"array types {dtypes}")
            return cls(
                split=str(meta["split"]), shard=int(meta["shard"]), num_shards=int(meta["num_shards"]),
                count=int(meta["count"]), wnids=tuple(meta["wnids"]),
                classes=tuple(tuple(c) for c in meta["classes"]), targets_dtype=dtypes[0], sizes_dtype=dtypes[1],
                fixed=tuple((str(p), str(r)) for p, r in meta["fixed"]),
                skipped=tuple((str(p), str(r)) for p, r in meta["skipped"]), stamps_crc32=int(meta["stamps_crc32"]),
                max_side=encoding["max_side"], quality=encoding["quality"], source=str(meta["source"]),
                fingerprint=str(meta["fingerprint"]), resumed=bool(meta.get("resumed", False)),
                created=str(meta["created"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{where}: metadata field missing or malformed ({exc!r}); reconvert the database") from exc


class Row(NamedTuple):
    """What the writer keeps per stored record until the final commit: its source position within the
    shard, the source image's size, what was fixed (None when stored as it was), and the source file's
    size and mtime as scanned (a resumed run converts again from the first file changed since)."""

    position: int
    height: int
    width: int
    fixed: str | None
    source_size: int = -1
    source_mtime: int = -1


class Problem(NamedTuple):
    """A source position that was not stored, and why."""

    position: int
    reason: str


@dataclass(frozen=True)
class Progress:
    """A shard's resumable state (the ``progress`` key while a conversion runs)."""

    fingerprint: str
    position: int = 0  # next source position to convert
    count: int = 0  # records stored
    batches: int = 0  # committed ``rows/`` batches
    problems: tuple[Problem, ...] = ()

    def to_msgpack(self) -> bytes:
        return msgpack.packb({"fingerprint": self.fingerprint, "position": self.position, "count": self.count,
                              "batches": self.batches, "problems": [list(p) for p in self.problems]},
                             use_bin_type=True)

    @classmethod
    def from_msgpack(cls, value: bytes, where: str) -> Progress:
        try:
            state = msgpack.unpackb(value, raw=False)
            return cls(str(state["fingerprint"]), int(state["position"]), int(state["count"]),
                       int(state["batches"]), tuple(Problem(int(p), str(r)) for p, r in state["problems"]))
        except (KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
            raise FormatError(f"{where}: conversion progress is damaged ({exc!r}); rerun with --overwrite") from exc


def encode_rows(rows: list[Row]) -> bytes:
    return msgpack.packb([list(r) for r in rows], use_bin_type=True)


def decode_rows(value: bytes, where: str) -> list[Row]:
    try:
        return [Row(*row) for row in msgpack.unpackb(value, raw=False)]
    except (TypeError, ValueError, msgpack.UnpackException) as exc:
        raise FormatError(f"{where}: conversion progress is damaged ({exc!r}); rerun with --overwrite") from exc


def rows_key(batch: int) -> bytes:
    return ROWS_PREFIX + b"%08d" % batch


def encode_paths(paths: list[str]) -> bytes:
    """Relative source paths as one blob, newline-separated (fast to load, lazy to split): UTF-8, with the
    bytes of a name that is not UTF-8 kept as they were (Python's ``surrogateescape``: lossless)."""
    for path in paths:
        if "\n" in path:
            raise FormatError(f"source path {path!r} contains a newline, which the format cannot store")
    return "\n".join(paths).encode("utf-8", "surrogateescape")


def decode_paths(blob: bytes) -> list[str]:
    return bytes(blob).decode("utf-8", "surrogateescape").split("\n") if blob else []


def encode_checksums(**values: bytes) -> bytes:
    """The ``checksums`` value: CRC-32 of the ``meta``, ``paths``, ``targets`` and ``sizes`` values, so damaged
    metadata is detected."""
    return msgpack.packb({name: zlib.crc32(value) for name, value in values.items()})


def check_checksum(checksums: bytes | None, name: str, value: bytes, where: str) -> None:
    """FormatError unless ``value`` (the ``name`` key) matches its CRC-32 in the ``checksums`` value."""
    try:
        expected = msgpack.unpackb(checksums, raw=False)[name] if checksums is not None else None
    except (KeyError, TypeError, ValueError, msgpack.UnpackException):
        expected = None
    if expected is None:
        raise FormatError(f"{where}: no checksum for its {name}; the database is damaged, reconvert it")
    if zlib.crc32(value) != expected:
        raise FormatError(f"{where}: its {name} fail their checksum; the metadata is damaged, reconvert it")
