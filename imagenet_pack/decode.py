"""Decoding stored JPEG bytes with OpenCV, with PIL's policy: RGB, no EXIF rotation, 3 channels for grey.

``decode_box`` decodes one box of an image, either by slicing OpenCV's full decode (the reference) or, with
``roi=True``, with the optional libjpeg-turbo extension ``_jpegroi`` that decodes only the rows and columns
the box needs (same pixels, tested; ~25-30% less decode time for RandomResizedCrop boxes).

A *decoder* turns a record into a sample: ``decoder(record, index, epoch, where)``. ``PilDecoder`` makes
``LmdbImageNet`` a drop-in for ImageFolder (any torchvision transform works); ``TensorDecoder`` returns
uint8 CHW tensors. The fused crop decoders live in :mod:`.fused`.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import cv2
import numpy as np
import torch
from PIL import Image

from .errors import DecodeError
from .format import Record

try:
    from . import _jpegroi
except ImportError:  # built only where libjpeg-turbo's headers were found (setup.py)
    _jpegroi = None

ROI_AVAILABLE = _jpegroi is not None
ROI_MISSING = ("the region decoder (imagenet_pack._jpegroi) was not built: install libjpeg-turbo's headers "
               "(Debian/Ubuntu libjpeg62-turbo-dev or libjpeg-turbo8-dev, Fedora libjpeg-turbo-devel) and "
               "reinstall imagenet-pack")

DECODE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
# libjpeg DCT scaling: decode at 1/2, 1/4, 1/8 size for the cost of a fraction of the IDCT work.
_REDUCED_FLAGS = {1: DECODE_FLAGS, 2: 16 | DECODE_FLAGS, 4: 32 | DECODE_FLAGS, 8: 64 | DECODE_FLAGS}


def decode_rgb(data: bytes, where: str, scale: int = 1) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of ``data`` at 1/``scale`` size (scale in 1, 2, 4, 8)."""
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAGS[scale])
    if rgb is None:
        raise DecodeError(f"{where}: stored image cannot be decoded by OpenCV; run `imagenet-pack verify --decode`")
    return rgb


def decode_box(data: bytes, box: tuple[int, int, int, int], scale: int, where: str, roi: bool,
               flip: bool = False) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of ``box`` (top, left, height, width, in the 1/``scale`` image), mirrored
    left-right if ``flip``."""
    top, left, h, w = box
    if roi:
        try:
            pixels = _jpegroi.decode_region(data, top, left, h, w, scale, flip)
            return np.frombuffer(pixels, np.uint8).reshape(h, w, 3)
        except _jpegroi.Unsupported:  # CMYK/YCCK: the converter re-encodes those, but OpenCV handles them
            pass
        except _jpegroi.Error as e:  # OpenCV, the reference (with its own, newer libjpeg-turbo), may still read it
            where = f"{where} (libjpeg-turbo: {e})"
    crop = decode_rgb(data, where, scale)[top:top + h, left:left + w]
    return cv2.flip(crop, 1) if flip else crop


def to_chw_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 array -> uint8 3xHxW tensor (a view: no copy, no float work)."""
    return torch.from_numpy(rgb).permute(2, 0, 1)


class PilDecoder:
    """Samples as RGB ``PIL.Image``: what ImageFolder yields, so torchvision transforms work unchanged."""

    def __call__(self, record: Record, index: int, epoch: int | None, where: str) -> Image.Image:
        return Image.fromarray(decode_rgb(record.image, where))


class TensorDecoder:
    """Samples as uint8 CHW RGB tensors of the full image."""

    def __call__(self, record: Record, index: int, epoch: int | None, where: str) -> torch.Tensor:
        return to_chw_tensor(decode_rgb(record.image, where))


Decoder = Callable[[Record, int, Union[int, None], str], Any]
DECODERS: dict[str, Callable[[], Decoder]] = {"pil": PilDecoder, "tensor": TensorDecoder}


def resolve_decoder(decoder: str | Decoder) -> Decoder:
    if isinstance(decoder, str):
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODERS)} or pass a decoder object")
        return DECODERS[decoder]()
    if not callable(decoder):
        raise TypeError(f"decoder must be a name or a callable, not {type(decoder).__name__}")
    return decoder
