"""A JPEG's marker structure, walked the way libjpeg walks it (``jdmarker.c``), torch-free.

libjpeg reads the segments before the first scan one after the other, each skipped by its length; between
two segments it looks for the next marker with ``next_marker``: bytes that are not 0xFF are skipped (as
"extraneous data"), runs of 0xFF are fill, and 0xFF 0x00 (a stuffed zero) is skipped too. A parser that
read ``FF 00 LL LL`` as a segment and jumped over ``LLLL`` bytes would see other markers than the decoder
does, so a file could hide scans (each a pass over the whole image) from it. Here every walk follows the
decoder's rules, and the count of scans is the count of start-of-scan markers anywhere after the start of
the file, an upper bound of what libjpeg processes however the markers are dressed up.
"""
from __future__ import annotations

import struct
from typing import Iterator, NamedTuple

SOI, EOI, SOS, COM = 0xD8, 0xD9, 0xDA, 0xFE
_PARAMETERLESS = {SOI, EOI, 0x01} | set(range(0xD0, 0xD8))  # SOI, EOI, TEM, RST0-7: no length field
APP_MARKERS = range(0xE0, 0xF0)


class Segment(NamedTuple):
    """One marker segment: ``marker`` at byte ``at`` (its 0xFF); the payload is ``data[start:end]``."""

    marker: int
    at: int
    start: int
    end: int


def next_marker(data: bytes, pos: int) -> tuple[int, int] | None:
    """(marker, offset of the 0xFF just before it) of the first marker at or after ``pos`` by libjpeg's ``next_marker``
    rules (non-0xFF bytes skipped, 0xFF fill swallowed, 0xFF 0x00 skipped), or None at the end of ``data``."""
    size = len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0:
            return None
        while pos < size and data[pos] == 0xFF:
            pos += 1
        if pos >= size:
            return None
        if data[pos] != 0:
            return data[pos], pos - 1
        pos += 1  # a stuffed zero: discarded, keep looking


def header_segments(data: bytes) -> Iterator[Segment]:
    """The segments libjpeg reads before the image data, in order, ending with the first start of scan (or
    at EOI or the end of the bytes). The file must begin with SOI; a segment whose length runs past the end
    of the bytes ends the walk."""
    if not data.startswith(b"\xff\xd8"):
        return
    pos = 2
    while True:
        found = next_marker(data, pos)
        if found is None:
            return
        marker, at = found
        if marker in _PARAMETERLESS:
            yield Segment(marker, at, at + 2, at + 2)
            if marker == EOI:
                return
            pos = at + 2
            continue
        if at + 4 > len(data):
            return
        (length,) = struct.unpack_from(">H", data, at + 2)
        end = at + 2 + length
        yield Segment(marker, at, at + 4, min(end, len(data)))
        if marker == SOS or length < 2 or end > len(data):
            return
        pos = end


def count_scans(data: bytes) -> int:
    """Start-of-scan markers anywhere after SOI: never fewer than the scans libjpeg decodes (0xFF never
    occurs unstuffed inside entropy-coded data, so each scan it reads starts at one of these)."""
    return data.count(b"\xff\xda", 2)


def without_metadata(data: bytes) -> bytes:
    """``data`` with every application segment (APP0-APP15) before the image data turned into a comment of
    the same length: what libjpeg says of the copy is what it finds in the image itself. (JFIF, Exif, ICC
    and Adobe segments only describe the pixels; libjpeg warns about odd ones, and prints only its first
    warning, so a harmless one would hide every later one.)"""
    out = None
    for segment in header_segments(data):
        if segment.marker in APP_MARKERS:
            out = out if out is not None else bytearray(data)
            out[segment.at + 1] = COM
    return bytes(out) if out is not None else data
