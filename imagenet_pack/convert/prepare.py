"""Turn one source file into the bytes to store, or into a reason it cannot be stored.

Runs in the converter's worker processes. Every image is fully decoded once here, so a database only ever
holds images that decode; the policy for odd inputs is applied and reported, never silent:

* JPEG (baseline, extended or progressive; greyscale or colour): stored byte for byte.
* CMYK / YCCK JPEG, PNG or other formats named .JPEG, lossless, arithmetic-coded or 12-bit JPEG: decoded and
  re-encoded as an RGB JPEG at quality 95 with 4:4:4 chroma (action ``fixed``).
* empty, truncated, unreadable, or a header claiming more than ``max_pixels``: not stored (``skipped``).
* with ``max_side``: images whose longer side exceeds it are downscaled (INTER_AREA) and re-encoded at
  ``quality``; smaller ones keep their original bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..read.pixels import DECODE_FLAGS
from .probe import ProbeError, needs_reencode, probe

FIX_QUALITY = 95
DEFAULT_MAX_PIXELS = 1 << 27  # 134 Mpx: far above any real photo, far below a decompression bomb
DEFAULT_MAX_BYTES = 1 << 28  # 256 MiB: the largest ILSVRC2012 file is ~15 MB


@dataclass(frozen=True)
class PrepareOptions:
    max_side: int | None = None
    quality: int = 90
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class Prepared:
    """A file ready to store (``image`` set) or a file to skip (``image`` None, ``reason`` says why)."""

    image: bytes | None
    height: int = 0  # of the stored image
    width: int = 0
    orig_height: int = 0  # of the source image
    orig_width: int = 0
    reason: str | None = None  # what was fixed or why it was skipped


def encode_jpeg(rgb: np.ndarray, quality: int, *, full_chroma: bool = False) -> bytes | None:
    """JPEG bytes of an HxWx3 RGB array, or None when OpenCV cannot encode it."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    if full_chroma:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), params)
    return buf.tobytes() if ok else None


def prepare(data: bytes, options: PrepareOptions) -> Prepared:
    """Validate ``data`` by decoding it fully and return what to store."""
    try:
        header = probe(data)
    except ProbeError as exc:
        return Prepared(None, reason=str(exc))
    pixels = header.width * header.height
    if pixels > options.max_pixels:
        return Prepared(None, reason=f"header claims {header.width}x{header.height} pixels, over the "
                        f"{options.max_pixels} pixel limit")
    if not header.complete:
        return Prepared(None, reason=f"truncated {header.kind.upper()}: the file ends before its end marker")
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), DECODE_FLAGS)
    if rgb is None or rgb.size == 0:
        return Prepared(None, reason=f"{header.kind.upper()} data that OpenCV cannot decode")
    height, width = rgb.shape[:2]
    fix = needs_reencode(header)
    if options.max_side and max(height, width) > options.max_side:
        scale = options.max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb, quality = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), options.quality
        image = encode_jpeg(rgb, quality)
    else:
        image = encode_jpeg(rgb, FIX_QUALITY, full_chroma=True) if fix else data
    if image is None:
        return Prepared(None, reason="OpenCV could not re-encode the decoded image as JPEG")
    return Prepared(image, rgb.shape[0], rgb.shape[1], height, width, fix)
