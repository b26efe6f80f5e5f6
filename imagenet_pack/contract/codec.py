"""JPEG bytes to RGB pixels and back, with one policy for the whole package (torch-free).

Decoding follows PIL's policy (what ImageFolder gives): RGB, no EXIF rotation, 3 channels for grey. The
converter validates every image with :func:`decode_checked`, which also treats libjpeg's *warnings* as
damage: libjpeg decodes a JPEG whose entropy data is cut short or bit-rotted by filling the rest with grey
and printing "Corrupt JPEG data" to stderr, so a decode that merely succeeds proves nothing. libjpeg prints
only its first warning, so a harmless one (an odd JFIF version, a thumbnail of the wrong size) would hide
the damage behind it: a JPEG that warns is decoded once more with its metadata segments neutralised, and
any warning left is damage. Re-encoding
(odd inputs, stores resized with ``--short-side`` or ``--max-side``) goes through :func:`encode_jpeg` at the
qualities defined here.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image

from ..errors import DecodeError
from .jpegstream import without_metadata

DECODE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION  # what PIL does: no EXIF rotation
# libjpeg DCT scaling: decode at 1/2, 1/4, 1/8 size for the cost of a fraction of the IDCT work.
_REDUCED_FLAGS = {1: DECODE_FLAGS, 2: 16 | DECODE_FLAGS, 4: 32 | DECODE_FLAGS, 8: 64 | DECODE_FLAGS}
DEFAULT_QUALITY = 90  # JPEG quality of resized stores (FFCV's default)
FIX_QUALITY = 95  # JPEG quality of inputs re-encoded because they cannot be stored as they are


def decode_rgb(data: bytes, where: str, scale: int = 1) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of ``data`` at 1/``scale`` size (scale in 1, 2, 4, 8)."""
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAGS[scale])
    if rgb is None:
        raise DecodeError(f"{where}: stored image cannot be decoded by OpenCV; run `imagenet-pack verify --decode`")
    return rgb


class _Stderr:
    """libjpeg prints its warnings with fprintf(stderr): while a decode runs, file descriptor 2 points at a
    memory file of this process's, read afterwards (2 system calls a decode; one thread at a time)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.saved = os.dup(2)
        self.capture = os.memfd_create("imagenet-pack-libjpeg") if hasattr(os, "memfd_create") else \
            os.open(os.devnull, os.O_WRONLY)
        self.readable = hasattr(os, "memfd_create")

    def decode(self, data: bytes, flags: int) -> tuple[np.ndarray | None, str]:
        os.dup2(self.capture, 2)
        try:
            rgb = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        finally:
            os.dup2(self.saved, 2)
        if not self.readable:
            return rgb, ""
        size = os.fstat(self.capture).st_size
        if not size:
            return rgb, ""
        said = os.pread(self.capture, min(size, 4096), 0).decode("utf-8", "replace")
        os.ftruncate(self.capture, 0)
        os.lseek(self.capture, 0, os.SEEK_SET)
        return rgb, said


_STDERR: _Stderr | None = None


def decode_checked(data: bytes) -> tuple[np.ndarray | None, str | None]:
    """Decode ``data`` fully: (pixels or None, what libjpeg found damaged or None).

    A decode that prints no warning is clean. One that does is decoded again from a copy whose application
    segments are comments (:func:`imagenet_pack.jpegstream.without_metadata`): those segments only describe
    the pixels, and libjpeg prints its first warning alone, so a warning about them would hide any later
    one. Whatever the copy still warns about is in the image data itself: damage, named by its first line.
    """
    global _STDERR
    if _STDERR is None or _STDERR.pid != os.getpid():
        _STDERR = _Stderr()
    rgb, said = _STDERR.decode(data, DECODE_FLAGS)
    if not _libjpeg_lines(said):
        return rgb, None
    neutral = without_metadata(data)
    warnings = _libjpeg_lines(_STDERR.decode(neutral, DECODE_FLAGS)[1] if neutral is not data else said)
    return rgb, (warnings[0] if warnings else None)


def _libjpeg_lines(said: str) -> list[str]:
    """libjpeg's lines in captured stderr (OpenCV's own log lines, which start with "[", aside)."""
    return [line.strip() for line in said.splitlines() if line.strip() and not line.startswith("[")]


def encode_jpeg(rgb: np.ndarray, quality: int, *, full_chroma: bool = False) -> bytes | None:
    """JPEG bytes of an HxWx3 RGB array, or None when OpenCV cannot encode it."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    if full_chroma:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), params)
    return buf.tobytes() if ok else None


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """The (height, width) torchvision's ``Resize(short)`` gives: the shorter side ``short``, the longer
    ``int(short * long / short_side)`` (truncated, as torchvision does)."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def resize_short_side(rgb: np.ndarray, short: int) -> np.ndarray:
    """torchvision's ``Resize(short)`` on a PIL image, exactly: PIL's antialiased bilinear to
    :func:`resized_size` (the kernel ``ImageFolder`` + ``Resize`` pipelines use)."""
    height, width = resized_size(rgb.shape[0], rgb.shape[1], short)
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


def max_side_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """The (height, width) of an image scaled so its longer side is ``longest`` (FFCV's ``max_resolution``)."""
    scale = longest / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_max_side(rgb: np.ndarray, longest: int) -> np.ndarray:
    """The longer side scaled to ``longest`` with OpenCV's INTER_AREA (FFCV's ``max_resolution``)."""
    height, width = max_side_size(rgb.shape[0], rgb.shape[1], longest)
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def stored_size(height: int, width: int, short_side: int | None, max_side: int | None) -> tuple[int, int]:
    """The (height, width) a ``height`` x ``width`` image is stored at with these store options: resized when
    larger than they allow (``--short-side``, ``--max-side``), else as it is."""
    if short_side and min(height, width) > short_side:
        return resized_size(height, width, short_side)
    if max_side and max(height, width) > max_side:
        return max_side_size(height, width, max_side)
    return height, width


def resize_for_store(rgb: np.ndarray, short_side: int | None, max_side: int | None) -> np.ndarray | None:
    """``rgb`` resized to its :func:`stored_size`, by the store option's own kernel (torchvision's ``Resize``
    for ``short_side``, FFCV's for ``max_side``); None when it is stored as it is."""
    height, width = rgb.shape[:2]
    size = stored_size(height, width, short_side, max_side)
    if size == (height, width):
        return None
    return resize_short_side(rgb, short_side or 0) if size == stored_size(height, width, short_side, None) \
        else resize_max_side(rgb, max_side or 0)
