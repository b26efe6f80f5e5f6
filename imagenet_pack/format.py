"""The on-disk format, in one place: keys, records and metadata (specified in docs/FORMAT.md).

A split is one or more LMDB environments (shards). Each holds two named databases:

* ``records``: key = the record's position in the shard as an 8-byte big-endian unsigned integer (so byte
  order is index order, unlike decimal strings); value = a msgpack map ``{image, size, target, height,
  width, crc32}`` holding the encoded JPEG bytes exactly as stored and a CRC-32 of them.
* ``tails``: when a record's value would leave most of its last LMDB overflow page empty, its last bytes
  (fewer than ``TAIL_MAX``) are stored here under the same key instead, where they pack densely into leaf
  pages; ``image`` then holds the first bytes and ``size`` the full length. This keeps the database within
  ~1% of the JPEG bytes instead of wasting half a page (2 KB) per image.
* ``meta``: ``meta`` = a msgpack map describing the shard and the split; ``paths`` = the records' source
  paths, newline-joined UTF-8 (its own key: opening a dataset never touches it); ``length`` = the record count
  as an 8-byte big-endian integer, written in the very last commit, so its presence marks a complete shard.
  While a conversion runs, ``progress`` and ``rows/NNNNNNNN`` hold its resumable state (removed at the end).

Nothing is pickled: msgpack maps of ints, strings, byte strings and lists only.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import msgpack
import numpy as np

from .errors import CorruptRecordError, FormatError

FORMAT_NAME = "imagenet_pack"
FORMAT_VERSION = 1
RECORDS_DB = b"records"
TAILS_DB = b"tails"
META_DB = b"meta"
META_KEY = b"meta"
LENGTH_KEY = b"length"
PATHS_KEY = b"paths"
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


def pack_array(values: Any, dtype: str) -> bytes:
    """Pack a 1-D sequence as raw little-endian bytes of ``dtype`` (e.g. '<u2')."""
    return np.asarray(values, dtype=dtype).tobytes()


def unpack_array(data: bytes, dtype: str, count: int, where: str) -> np.ndarray:
    array = np.frombuffer(data, dtype=dtype)
    if array.size != count:
        raise FormatError(f"{where}: metadata array holds {array.size} values, expected {count}")
    return array


def target_dtype(num_classes: int) -> str:
    return "<u2" if num_classes <= 0xFFFF else "<u4"


def encode_meta(meta: dict[str, Any]) -> bytes:
    return msgpack.packb(meta, use_bin_type=True)


def decode_meta(value: bytes, where: str) -> dict[str, Any]:
    """Decode a shard's metadata and check its format name and version."""
    try:
        meta = msgpack.unpackb(value, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise FormatError(f"{where}: metadata is not valid msgpack ({exc}); reconvert the database") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise FormatError(f"{where}: not an {FORMAT_NAME} database (format field is {meta.get('format')!r})")
    version = meta.get("version")
    if version != FORMAT_VERSION:
        raise FormatError(
            f"{where}: format version {version!r} is not supported by this imagenet_pack "
            f"(it reads version {FORMAT_VERSION}); upgrade imagenet_pack or reconvert the database"
        )
    return meta


def encode_paths(paths: list[str]) -> bytes:
    """Relative source paths as one UTF-8 blob, newline-separated (fast to load, lazy to split)."""
    for path in paths:
        if "\n" in path:
            raise FormatError(f"source path {path!r} contains a newline, which the format cannot store")
    return "\n".join(paths).encode("utf-8")


def decode_paths(blob: bytes) -> list[str]:
    return blob.decode("utf-8").split("\n") if blob else []
