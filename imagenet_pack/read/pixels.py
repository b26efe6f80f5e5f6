"""JPEG bytes to RGB pixels with OpenCV, with PIL's policy: RGB, no EXIF rotation, 3 channels for grey.

Torch-free, so the converter validates images with the same flags the reader decodes them with.
``decode_box`` decodes one box of an image with one of three backends, all giving the same pixels (tested):

* ``"opencv"``: OpenCV's full decode, sliced (the reference);
* ``"roi"``: the optional libjpeg-turbo extension ``_jpegroi``, which decodes only the rows and columns the box
  needs (built by ``pip install`` where libjpeg-turbo's headers are; ~35% less decode time for
  RandomResizedCrop boxes on ImageNet);
* ``"nvimgcodec"``: NVIDIA nvImageCodec's CPU backend (its libjpeg-turbo) through a region of the code stream,
  from pip alone (``pip install 'imagenet-pack[nvimgcodec]'``); it has no reduced-size decode, so a box
  decoded at 1/2, 1/4 or 1/8 scale goes to OpenCV.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any

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
    """RGB pixels of ``box`` at full scale by nvImageCodec's CPU backend, or None where it declines."""
    nv, decoder, params = _nvimgcodec()
    top, left, h, w = box
    region = nv.CodeStream(data).get_sub_code_stream(region=nv.Region(top, left, top + h, left + w))
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
    if backend == "roi":
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
