"""JPEG bytes to RGB pixels with OpenCV, with PIL's policy: RGB, no EXIF rotation, 3 channels for grey.

Torch-free, so the converter validates images with the same flags the reader decodes them with.
``decode_box`` decodes one box of an image with one of two backends, giving the same pixels (tested):

* ``"opencv"``: OpenCV's full decode, sliced (the reference);
* ``"nvimgcodec"``: NVIDIA nvImageCodec's CPU backend (its libjpeg-turbo) on a region of the code stream: only
  the rows and columns the box needs reach the IDCT (~35% less decode time for RandomResizedCrop boxes on
  ImageNet), from pip alone (``pip install 'imagenet-pack[nvimgcodec]'``, Linux); it has no reduced-size
  decode, so a box decoded at 1/2, 1/4 or 1/8 scale goes to OpenCV.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any

import cv2
import numpy as np

from ..errors import DecodeError

DECODE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION  # what PIL does: no EXIF rotation
# libjpeg DCT scaling: decode at 1/2, 1/4, 1/8 size for the cost of a fraction of the IDCT work.
_REDUCED_FLAGS = {1: DECODE_FLAGS, 2: 16 | DECODE_FLAGS, 4: 32 | DECODE_FLAGS, 8: 64 | DECODE_FLAGS}

Box = tuple[int, int, int, int]  # top, left, height, width

NVIMGCODEC_AVAILABLE = importlib.util.find_spec("nvidia") is not None and \
    importlib.util.find_spec("nvidia.nvimgcodec") is not None
NVIMGCODEC_MISSING = "nvImageCodec is not installed: pip install 'imagenet-pack[nvimgcodec]'"
_NV: tuple[int, Any, Any, Any] | None = None  # pid, module, CPU-only decoder, decode parameters


@contextlib.contextmanager
def _quiet():
    """Silence file descriptors 1 and 2: nvImageCodec prints, from C, that the GPU libraries it looks for at
    import (nvJPEG, nvJPEG2000, nvTIFF) are missing, which on a CPU-only machine is expected."""
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _nvimgcodec() -> tuple[Any, Any, Any]:
    """This process's nvImageCodec module, CPU-only decoder and RGB decode parameters (made on first use)."""
    global _NV
    if _NV is None or _NV[0] != os.getpid():
        with _quiet():
            import nvidia.nvimgcodec as nv
        decoder = nv.Decoder(device_id=nv.NVIMGCODEC_DEVICE_CPU_ONLY, backends=[nv.Backend(nv.BackendKind.CPU_ONLY)])
        params = nv.DecodeParams(color_spec=nv.ColorSpec.SRGB, apply_exif_orientation=False)
        _NV = (os.getpid(), nv, decoder, params)
    return _NV[1], _NV[2], _NV[3]


def _decode_region_nvimgcodec(data: bytes, box: Box) -> np.ndarray | None:
    """RGB pixels of ``box`` at full scale by nvImageCodec's CPU backend, or None where it declines (and for
    CMYK, which the converter re-encodes anyway, so that every backend gives OpenCV's pixels)."""
    nv, decoder, params = _nvimgcodec()
    top, left, h, w = box
    stream = nv.CodeStream(data)
    if stream.num_channels not in (1, 3):  # CMYK/YCCK: its colour conversion is not OpenCV's (the reference)
        return None
    region = stream.get_sub_code_stream(region=nv.Region(top, left, top + h, left + w))
    image = decoder.decode(region, params=params)
    if image is None:
        return None
    pixels = np.asarray(image.cpu())
    return pixels if pixels.shape == (h, w, 3) else None


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


def decode_box(data: bytes, box: Box, scale: int, where: str, backend: str = "opencv",
               flip: bool = False) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of ``box`` (top, left, height, width, in the 1/``scale`` image) by ``backend``,
    mirrored left-right if ``flip``. DecodeError for a box outside the image, whichever decoder runs; what a
    backend declines (CMYK, odd JPEGs) goes to OpenCV, the reference."""
    top, left, h, w = box
    if backend == "nvimgcodec" and scale == 1:
        try:
            pixels = _decode_region_nvimgcodec(data, box)
        except Exception as exc:  # noqa: BLE001 - its own error types; OpenCV below gives the verdict
            pixels, where = None, f"{where} (nvImageCodec: {exc})"
        if pixels is not None:
            return cv2.flip(pixels, 1) if flip else pixels
    rgb = decode_rgb(data, where, scale)
    check_box(box, *rgb.shape[:2], where)
    crop = rgb[top:top + h, left:left + w]
    return cv2.flip(crop, 1) if flip else crop
