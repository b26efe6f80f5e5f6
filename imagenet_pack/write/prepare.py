"""Turn one source file into the bytes to store, or into the reason it cannot be stored.

Runs in the converter's worker processes. Every image is fully decoded once here, so a database only ever
holds images that decode; the policy for odd inputs is applied and reported, never silent:

* JPEG (baseline, extended or progressive; greyscale or colour): stored byte for byte.
* CMYK / YCCK JPEG, PNG or other formats named .JPEG, lossless, arithmetic-coded or 12-bit JPEG: decoded and
  re-encoded as an RGB JPEG at quality 95 with 4:4:4 chroma (``fixed``).
* empty, truncated or unreadable files, headers claiming more than ``max_pixels``, JPEGs of more than
  ``max_scans`` scans, JPEGs libjpeg finds damaged while decoding (cut short or bit-rotted entropy data,
  which it would fill with grey), and progressive JPEGs whose scans stop before every coefficient reaches
  its last bit (they decode silently, blurred): not stored (``skip``); with ``keep_damaged`` such a JPEG is
  stored as what decodes, re-encoded, and listed as fixed with the reason.
* bytes after the end-of-image marker (a motion photo's video, say) are a trailer the decoder never reads:
  stored as they are, with the image.
* with ``short_side`` (torchvision's ``Resize``) or ``max_side`` (FFCV's): images larger than that are
  resized and re-encoded at ``quality`` with 4:4:4 chroma; smaller ones keep their original bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..contract.codec import (
    DECODE_FLAGS,
    DEFAULT_QUALITY,
    FIX_QUALITY,
    decode_checked,
    encode_jpeg,
    resize_for_store,
)
from ..contract.jpegstream import without_padding
from ..contract.probe import ProbeError, needs_reencode, probe
from ..sources.items import MAX_FILE_BYTES

DEFAULT_MAX_PIXELS = 1 << 27  # 134 Mpx: far above any real photo, far below a decompression bomb
DEFAULT_MAX_SCANS = 64  # ImageNet's progressive JPEGs have about 10 scans


@dataclass(frozen=True)
class PrepareOptions:
    max_side: int | None = None
    short_side: int | None = None
    quality: int = DEFAULT_QUALITY
    keep_damaged: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = MAX_FILE_BYTES
    max_scans: int = DEFAULT_MAX_SCANS


@dataclass(frozen=True)
class Prepared:
    """A file ready to store (``image`` set; ``fixed`` says what was done to it, if anything) or a file to
    skip (``image`` None, ``skip`` says why)."""

    image: bytes | None
    height: int = 0  # of the stored image
    width: int = 0
    fixed: str | None = None
    skip: str | None = None


def prepare(data: bytes, options: PrepareOptions) -> Prepared:
    """Validate ``data`` by decoding it fully and return what to store."""
    try:
        header = probe(data)
    except ProbeError as exc:
        return Prepared(None, skip=str(exc))
    if header.width * header.height > options.max_pixels:
        return Prepared(None, skip=f"header claims {header.width}x{header.height} pixels, over the "
                        f"{options.max_pixels} pixel limit")
    if header.scans > options.max_scans:
        return Prepared(None, skip=f"{header.frame} JPEG of {header.scans} scans, over the {options.max_scans} scan "
                        "limit (each scan is a pass over the whole image: it would take that long on every epoch)")
    if not header.complete:
        return Prepared(None, skip=f"truncated {header.kind.upper()}: the file ends before its end marker")
    padding = None
    if header.kind == "jpeg":
        rgb, damage = decode_checked(data)
        trimmed = without_padding(data) if damage else None
        if trimmed is not None:  # zero bytes before the end marker: harmless if the pixels are the very same
            again, damage_again = decode_checked(trimmed)
            if damage_again is None and again is not None and rgb is not None and np.array_equal(again, rgb):
                padding = f"{len(data) - len(trimmed)} padding bytes before the JPEG end marker dropped (same pixels)"
                data, damage = trimmed, None
    else:
        rgb, damage = cv2.imdecode(np.frombuffer(data, np.uint8), DECODE_FLAGS), None
    if rgb is None or rgb.size == 0:
        return Prepared(None, skip=f"{header.kind.upper()} data that OpenCV cannot decode")
    if header.unrefined and not damage:  # libjpeg decodes it without a word, with only its first scans' detail
        damage = (f"its scans stop before component(s) {', '.join(map(str, header.unrefined))} reach their last "
                  "bit: later scans missing")
        said, fix = f"incomplete {header.frame} JPEG: {damage}", f"incomplete {header.frame} JPEG ({damage})"
    else:
        said, fix = f"damaged JPEG: libjpeg says \"{damage}\"", f"damaged JPEG (libjpeg: \"{damage}\")"
    if damage and not options.keep_damaged:
        return Prepared(None, skip=f"{said} (the pixels after the damage would be grey, garbage or blurred); pass "
                        "--keep-damaged to store what decodes")
    fixed = f"{fix} re-encoded as it decodes" if damage else needs_reencode(header)
    resized = resize_for_store(rgb, options.short_side, options.max_side)
    if resized is not None:
        rgb, image = _resized(resized, options.quality)
    else:
        image = encode_jpeg(rgb, FIX_QUALITY, full_chroma=True) if fixed else data
    if image is None:
        return Prepared(None, skip="OpenCV could not re-encode the decoded image as JPEG")
    return Prepared(image, rgb.shape[0], rgb.shape[1], fixed or padding)


def _resized(rgb: np.ndarray, quality: int) -> tuple[np.ndarray, bytes | None]:
    # full chroma: 4:2:0 changes twice as many of a pretrained model's predictions (docs/PERFORMANCE.md)
    return rgb, encode_jpeg(rgb, quality, full_chroma=True)
