"""JPEG bytes to RGB pixels with OpenCV, with PIL's policy: RGB, no EXIF rotation, 3 channels for grey.

Torch-free, so the converter validates images with the same flags the reader decodes them with.
``decode_box`` decodes one box of an image, either by slicing OpenCV's full decode (the reference) or, with
``roi=True``, with the optional libjpeg-turbo extension ``_jpegroi`` that decodes only the rows and columns
the box needs (same pixels, tested; ~25-30% less decode time for RandomResizedCrop boxes).
"""
from __future__ import annotations

import cv2
import numpy as np

from ..errors import DecodeError

try:
    from . import _jpegroi
except ImportError:  # built only where libjpeg-turbo's headers were found (setup.py)
    _jpegroi = None

ROI_AVAILABLE = _jpegroi is not None
ROI_MISSING = ("the region decoder (imagenet_pack.read._jpegroi) was not built: install libjpeg-turbo's headers "
               "(Debian/Ubuntu libjpeg62-turbo-dev or libjpeg-turbo8-dev, Fedora libjpeg-turbo-devel) and "
               "reinstall imagenet-pack")

DECODE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION  # what PIL does: no EXIF rotation
# libjpeg DCT scaling: decode at 1/2, 1/4, 1/8 size for the cost of a fraction of the IDCT work.
_REDUCED_FLAGS = {1: DECODE_FLAGS, 2: 16 | DECODE_FLAGS, 4: 32 | DECODE_FLAGS, 8: 64 | DECODE_FLAGS}

Box = tuple[int, int, int, int]  # top, left, height, width


def decode_rgb(data: bytes, where: str, scale: int = 1) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of ``data`` at 1/``scale`` size (scale in 1, 2, 4, 8)."""
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAGS[scale])
    if rgb is None:
        raise DecodeError(f"{where}: stored image cannot be decoded by OpenCV; run `imagenet-pack verify --decode`")
    return rgb


def check_box(box: Box, height: int, width: int, where: str) -> None:
    """DecodeError unless ``box`` is a non-empty box inside a ``height`` x ``width`` image."""
    top, left, h, w = box
    if h < 1 or w < 1 or top < 0 or left < 0 or top + h > height or left + w > width:
        raise DecodeError(f"{where}: crop box (top {top}, left {left}, {h}x{w}) is not inside the "
                          f"{height}x{width} image")


def decode_box(data: bytes, box: Box, scale: int, where: str, roi: bool, flip: bool = False) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of ``box`` (top, left, height, width, in the 1/``scale`` image), mirrored
    left-right if ``flip``. DecodeError for a box outside the image, whichever decoder runs."""
    top, left, h, w = box
    if roi:
        try:
            pixels = _jpegroi.decode_region(data, top, left, h, w, scale, flip)
            return np.frombuffer(pixels, np.uint8).reshape(h, w, 3)
        except _jpegroi.Unsupported:  # CMYK/YCCK: the converter re-encodes those, but OpenCV handles them
            pass
        except ValueError:  # the box is outside the image: say so in the package's words below
            pass
        except _jpegroi.Error as e:  # OpenCV, the reference (with its own, newer libjpeg-turbo), may still read it
            where = f"{where} (libjpeg-turbo: {e})"
    rgb = decode_rgb(data, where, scale)
    check_box(box, *rgb.shape[:2], where)
    crop = rgb[top:top + h, left:left + w]
    return cv2.flip(crop, 1) if flip else crop
