"""A JPEG's marker structure, walked the way libjpeg walks it (``jdmarker.c``), torch-free.

libjpeg reads the segments before the first scan one after the other, each skipped by its length; between
two segments it looks for the next marker with ``next_marker``: bytes that are not 0xFF are skipped (as
"extraneous data"), runs of 0xFF are fill, and 0xFF 0x00 (a stuffed zero) is skipped too. A parser that
read ``FF 00 LL LL`` as a segment and jumped over ``LLLL`` bytes would see other markers than the decoder
does, so a file could hide scans (each a pass over the whole image) from it. Here every walk follows the
decoder's rules: :func:`walk` goes through the whole stream as the decoder does, segment by segment and scan
by scan (entropy-coded data ends at the first marker that is not a stuffed zero, fill or a restart), and
stops at the end-of-image marker: what follows it is a trailer the decoder never reads (a motion photo's
video, say), never scans. Bytes inside an application segment are skipped by its length, as libjpeg skips
them. A progressive image is complete only if its scans bring every coefficient of every component down to
its last bit (:attr:`Stream.unrefined`).
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

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


_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start of frame (C4 DHT, C8 JPG, CC DAC are not)
PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}


class Scan(NamedTuple):
    """One start-of-scan header: its components' ids, spectral selection and successive approximation."""

    components: tuple[int, ...]
    ss: int
    se: int
    ah: int
    al: int


class Stream(NamedTuple):
    """What :func:`walk` found: the frame's marker and component ids, the scans in order, and the offset just
    past the end-of-image marker (None when the bytes end first: a cut file)."""

    frame: int | None
    components: tuple[int, ...]
    scans: tuple[Scan, ...]
    end: int | None

    @property
    def unrefined(self) -> list[int]:
        """Ids of the components some of whose coefficients never reach their last bit: for a progressive
        frame, those not covered for every coefficient 0..63 by a scan with Al = 0; for a sequential one, those
        in no scan at all. Empty for a complete image."""
        if self.frame in PROGRESSIVE:
            final = {c: [False] * 64 for c in self.components}
            for scan in self.scans:
                if scan.al == 0:
                    for c in scan.components:
                        for k in range(scan.ss, min(scan.se, 63) + 1):
                            if c in final:
                                final[c][k] = True
            return [c for c in self.components if not all(final[c])]
        seen = {c for scan in self.scans for c in scan.components}
        return [c for c in self.components if c not in seen]


def _entropy_end(data: bytes, pos: int) -> int:
    """Where the entropy-coded data starting at ``pos`` ends: at the first 0xFF that starts a marker (not a
    stuffed zero, a restart marker or fill), or at the end of the bytes."""
    size = len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= size:
            return size
        following = data[pos + 1]
        if following == 0 or 0xD0 <= following <= 0xD7:
            pos += 2
        elif following == 0xFF:
            pos += 1
        else:
            return pos


def walk(data: bytes, max_scans: int = 1 << 16) -> Stream:
    """The whole stream as the decoder goes through it, up to its end-of-image marker; it stops early after
    ``max_scans`` + 1 scans (enough to refuse a file), or where the bytes end or a segment runs past them."""
    frame: int | None = None
    components: tuple[int, ...] = ()
    scans: list[Scan] = []
    if not data.startswith(b"\xff\xd8"):
        return Stream(frame, components, (), None)
    pos = 2
    while True:
        found = next_marker(data, pos)
        if found is None:
            return Stream(frame, components, tuple(scans), None)
        marker, at = found
        if marker == EOI:
            return Stream(frame, components, tuple(scans), at + 2)
        if marker in _PARAMETERLESS:
            pos = at + 2
            continue
        if at + 4 > len(data):
            return Stream(frame, components, tuple(scans), None)
        (length,) = struct.unpack_from(">H", data, at + 2)
        end = at + 2 + length
        if length < 2 or end > len(data):
            return Stream(frame, components, tuple(scans), None)
        payload = data[at + 4:end]
        if marker in _SOF and len(payload) >= 6 and frame is None:
            count = payload[5]
            frame, components = marker, tuple(payload[6 + 3 * k] for k in range(count) if 6 + 3 * k < len(payload))
        elif marker == SOS and payload:
            count = payload[0]
            tail = payload[1 + 2 * count:]
            ids = tuple(payload[1 + 2 * k] for k in range(count) if 1 + 2 * k < len(payload))
            if len(tail) >= 3:
                scans.append(Scan(ids, tail[0], tail[1], tail[2] >> 4, tail[2] & 15))
            if len(scans) > max_scans:
                return Stream(frame, components, tuple(scans), None)
            pos = _entropy_end(data, end)
            continue
        pos = end


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


def without_padding(data: bytes) -> bytes | None:
    """``data`` without the zero bytes just before its end-of-image marker (filler some writers leave after the
    last scan; libjpeg calls them extraneous), or None when there are none."""
    end = walk(data).end
    if end is None:
        return None
    eoi = end - 2
    start = eoi
    while start > 0 and data[start - 1] == 0:
        start -= 1
    return data[:start] + data[eoi:] if start < eoi else None
