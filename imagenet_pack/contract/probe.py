"""Read what an image file claims to be from its header bytes, without decoding pixels.

The converter uses this to refuse absurd headers before allocating pixels (a pixel count, a number of
scans: each scan of a progressive JPEG costs a pass over the whole image, so thousands of them make a valid
300 KB file take minutes to decode), to find CMYK and other JPEGs that GPU and torchvision decoders cannot
read, and to catch truncated files early.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .jpegstream import SOS, header_segments, walk

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_OTHER_MAGIC = {b"GIF87a": "gif", b"GIF89a": "gif", b"BM": "bmp", b"II*\x00": "tiff", b"MM\x00*": "tiff"}

# Start-of-frame markers libjpeg-turbo, nvJPEG and torchvision all decode: baseline, extended, progressive
# Huffman. Lossless (C3), hierarchical and arithmetic-coded frames are rarer and less widely supported.
_COMMON_SOF = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}
_OTHER_SOF = {0xC3: "lossless", 0xC5: "hierarchical", 0xC6: "hierarchical", 0xC7: "hierarchical",
              0xC9: "arithmetic", 0xCA: "arithmetic", 0xCB: "arithmetic", 0xCD: "arithmetic",
              0xCE: "arithmetic", 0xCF: "arithmetic"}


@dataclass(frozen=True)
class Header:
    """What the file's header says: container kind, size, and for JPEG the frame details."""

    kind: str  # "jpeg", "png", "gif", "bmp", "tiff", "webp"
    width: int = 0
    height: int = 0
    components: int = 0  # JPEG: 1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK
    frame: str = ""  # JPEG: baseline / extended / progressive / lossless / arithmetic / hierarchical
    precision: int = 8
    complete: bool = True  # has its end marker (JPEG EOI after the scan, PNG IEND)
    scans: int = 0  # JPEG: scans, counted as the decoder meets them up to EOI (decode time grows with each)
    unrefined: tuple[int, ...] = ()  # JPEG: components some of whose coefficients no scan brings to the last bit


class ProbeError(ValueError):
    """The bytes are not a readable image header; the message says why."""


def sniff(data: bytes) -> str | None:
    """The container kind from the magic bytes, or None when it is not a known image format."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, kind in _OTHER_MAGIC.items():
        if data.startswith(magic):
            return kind
    return None


def probe(data: bytes) -> Header:
    """Parse the header of ``data``; raise ProbeError for empty, unknown or malformed headers."""
    if not data:
        raise ProbeError("empty file")
    kind = sniff(data)
    if kind is None:
        raise ProbeError("not an image (unknown file signature)")
    if kind == "jpeg":
        return _probe_jpeg(data)
    if kind == "png":
        return _probe_png(data)
    try:
        width, height = _OTHER_SIZE[kind](data)
    except (struct.error, IndexError, KeyError) as exc:
        raise ProbeError(f"truncated or corrupt {kind.upper()} header (the file is {len(data)} bytes)") from exc
    if width <= 0 or height <= 0:
        raise ProbeError(f"{kind.upper()} header gives an empty size {width}x{height}")
    return Header(kind, width, height)


def _bmp_size(data: bytes) -> tuple[int, int]:
    if struct.unpack_from("<I", data, 14)[0] == 12:  # BITMAPCOREHEADER
        return struct.unpack_from("<HH", data, 18)
    width, height = struct.unpack_from("<ii", data, 18)
    return width, abs(height)  # negative height: rows stored top-down


def _gif_size(data: bytes) -> tuple[int, int]:
    return struct.unpack_from("<HH", data, 6)


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = struct.unpack_from("<I", data, 21)[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        w, h = data[24:27], data[27:30]
        if len(h) < 3:
            raise IndexError("VP8X header cut short")
        return int.from_bytes(w, "little") + 1, int.from_bytes(h, "little") + 1
    raise KeyError(f"unknown WebP chunk {chunk!r}")


def _tiff_size(data: bytes) -> tuple[int, int]:
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    (count,) = struct.unpack_from(order + "H", data, ifd)
    size = {}
    for i in range(count):
        tag, kind = struct.unpack_from(order + "HH", data, ifd + 2 + 12 * i)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            size[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, ifd + 2 + 12 * i + 8)[0]
    return size[256], size[257]


_OTHER_SIZE = {"bmp": _bmp_size, "gif": _gif_size, "webp": _webp_size, "tiff": _tiff_size}


def _probe_jpeg(data: bytes, max_scans: int = 1 << 16) -> Header:
    sof, first_scan = None, None
    for segment in header_segments(data):  # as libjpeg reads them: stray bytes and FF 00 skipped, not jumped
        if segment.marker in _COMMON_SOF or segment.marker in _OTHER_SOF:
            if segment.start + 6 > segment.end:
                raise ProbeError(f"corrupt JPEG header: frame header cut short at byte {segment.at}")
            precision, height, width, components = struct.unpack_from(">BHHB", data, segment.start)
            sof = (_COMMON_SOF.get(segment.marker) or _OTHER_SOF[segment.marker], precision, height, width,
                   components)
        elif segment.marker == SOS:
            first_scan = segment.at
    if sof is None:
        raise ProbeError("truncated or corrupt JPEG: no frame header (SOF) before the image data")
    frame, precision, height, width, components = sof
    if width == 0 or height == 0:
        raise ProbeError(f"JPEG header gives an empty size {width}x{height}")
    # the stream walked as the decoder walks it, up to its end marker (a cut-off file has none)
    stream = walk(data, max_scans)
    complete = first_scan is not None and stream.end is not None
    return Header("jpeg", width, height, components, frame, precision, complete, len(stream.scans),
                  tuple(stream.unrefined) if complete else ())


def _probe_png(data: bytes) -> Header:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ProbeError("truncated or corrupt PNG: no IHDR chunk")
    width, height = struct.unpack_from(">II", data, 16)
    complete = b"IEND" in data[-32:]
    return Header("png", width, height, complete=complete)


def needs_reencode(header: Header) -> str | None:
    """Why a file cannot be stored as it is (a reason for the report), or None when it can."""
    if header.kind != "jpeg":
        return f"{header.kind.upper()} data (not JPEG) re-encoded to JPEG"
    if header.components == 4:
        return "CMYK JPEG re-encoded to RGB JPEG"
    if header.components not in (1, 3):
        return f"JPEG with {header.components} components re-encoded to RGB JPEG"
    if header.frame not in _COMMON_SOF.values():
        return f"{header.frame} JPEG re-encoded to baseline JPEG"
    if header.precision != 8:
        return f"{header.precision}-bit JPEG re-encoded to 8-bit JPEG"
    return None
