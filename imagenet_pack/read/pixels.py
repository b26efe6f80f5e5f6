"""One box of a stored JPEG as RGB pixels, by one of two CPU backends giving the same pixels (tested):

* ``"opencv"``: OpenCV's full decode (:func:`imagenet_pack.codec.decode_rgb`), sliced: the reference;
* ``"nvimgcodec"``: NVIDIA nvImageCodec's CPU backend (its libjpeg-turbo) on a region of the code stream:
  decoding stops at the box's last row, and rows above it are only entropy-decoded (columns beside a box
  save nothing: docs/PERFORMANCE.md has the figures), from pip alone (``pip install
  -e '.[nvimgcodec]'`` in a checkout, Linux); it has no reduced-size decode, so a box decoded at 1/2, 1/4 or 1/8
  scale goes to OpenCV.

Torch-free. Every decode is checked against the size the record stores (covered by its checksum), so a
JPEG whose header disagrees with its record is an error, never a sample of other rows.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..contract.codec import decode_rgb
from ..errors import DamagedError, DecodeError
from . import nvcodec

Box = tuple[int, int, int, int]  # top, left, height, width

def _decode_region_nvimgcodec(data: bytes, box: Box, size: tuple[int, int]) -> np.ndarray | None:
    """RGB pixels of ``box`` at full scale by nvImageCodec's CPU backend, or None where it declines (and for
    CMYK, which the converter re-encodes anyway, so that every backend gives OpenCV's pixels)."""
    nv, decoder, params = nvcodec.cpu_decoder()
    top, left, h, w = box
    stream = nv.CodeStream(data)
    if (stream.height, stream.width) != size or stream.num_channels not in (1, 3):
        return None  # OpenCV then gives the verdict (CMYK/YCCK: its colour conversion is the reference)
    region = stream.get_sub_code_stream(region=nv.Region(top, left, top + h, left + w))
    image = decoder.decode(region, params=params)
    if image is None:
        return None
    pixels = np.asarray(image.cpu())
    return pixels if pixels.shape == (h, w, 3) else None


def check_box(box: Box, height: int, width: int, where: str) -> None:
    """DecodeError unless ``box`` is a non-empty box inside a ``height`` x ``width`` image."""
    top, left, h, w = box
    if h < 1 or w < 1 or top < 0 or left < 0 or top + h > height or left + w > width:
        raise DecodeError(f"{where}: crop box (top {top}, left {left}, {h}x{w}) is not inside the "
                          f"{height}x{width} image")


def decode_full(data: bytes, size: tuple[int, int], where: str, scale: int = 1) -> np.ndarray:
    """The whole image at 1/``scale`` (libjpeg rounds up), DecodeError unless the record's ``size`` (height,
    width) is what the JPEG holds."""
    rgb = decode_rgb(data, where, scale)
    expected = (-(-size[0] // scale), -(-size[1] // scale))
    if rgb.shape[:2] != expected:
        raise DecodeError(f"{where}: the JPEG decodes to {rgb.shape[0]}x{rgb.shape[1]} at 1/{scale}, its record "
                          f"says {size[0]}x{size[1]}; {DamagedError.remedy}")
    return rgb


def decode_box(data: bytes, box: Box, scale: int, size: tuple[int, int], where: str, backend: str = "opencv",
               flip: bool = False) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of ``box`` (top, left, height, width, in the 1/``scale`` image) of a JPEG of
    ``size`` (the record's height, width) by ``backend``, mirrored left-right if ``flip``. What a backend
    declines (CMYK, odd JPEGs) goes to OpenCV, the reference."""
    top, left, h, w = box
    if backend == "nvimgcodec" and scale == 1:
        try:
            pixels = _decode_region_nvimgcodec(data, box, size)
        except Exception as exc:  # noqa: BLE001 - its own error types; OpenCV below gives the verdict
            pixels, where = None, f"{where} (nvImageCodec: {exc})"
        if pixels is not None:
            return cv2.flip(pixels, 1) if flip else pixels
    rgb = decode_full(data, size, where, scale)
    check_box(box, rgb.shape[0], rgb.shape[1], where)
    crop = rgb[top:top + h, left:left + w]
    return cv2.flip(crop, 1) if flip else crop
