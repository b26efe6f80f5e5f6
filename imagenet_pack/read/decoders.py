"""Decoders: turn a record into a sample, ``decoder(record, index, epoch, where)``.

``PilDecoder`` makes ``LmdbImageNet`` a drop-in for ImageFolder (any torchvision transform works);
``TensorDecoder`` returns uint8 CHW tensors of the whole image. The fused decoders (:class:`FusedDecoder`)
return uint8 CHW RGB tensors of the sample only, with no float work on the CPU: a :class:`~.crops.Plan`
from the crop law, then the box is decoded (with ``backend="nvimgcodec"`` only its region reaches the IDCT;
with ``dct_scaling`` libjpeg decodes at 1/2, 1/4 or 1/8 when the box stays at least the output size there)
and resized once with torchvision's antialiased bilinear on uint8 (the kernel of its tensor backend, within
0.002 levels of PIL's on real ImageNet JPEGs); a train crop that is only enlarged goes through OpenCV's
bilinear instead (antialiasing is a no-op there, and it is faster: docs/PERFORMANCE.md; within a level of PIL's); a val
window is cut from the image resized by torch's kernel, whichever way (exactness first).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..contract.format import Record
from ..errors import DecoderUnavailableError
from ..torch_private import UPSAMPLE_BILINEAR_AA
from .crops import CROP_RATIO, GEOMETRIES, RATIO, SCALE, CenterCropLaw, CropLaw, Plan, RandomResizedCropLaw
from .nvcodec import AVAILABLE as NVIMGCODEC_AVAILABLE
from .nvcodec import MISSING as NVIMGCODEC_MISSING
from .pixels import Box, check_box, decode_box, decode_full


def to_chw_tensor(rgb) -> torch.Tensor:
    """uint8 HxWx3 array -> uint8 3xHxW tensor (a view: no copy, no float work)."""
    return torch.from_numpy(rgb).permute(2, 0, 1)


class PilDecoder:
    """Samples as RGB ``PIL.Image``: what ImageFolder yields, so torchvision transforms work unchanged."""

    def __call__(self, record: Record, index: int, epoch: int | None, where: str) -> Image.Image:
        return Image.fromarray(decode_full(record.image, (record.height, record.width), where))


class TensorDecoder:
    """Samples as uint8 CHW RGB tensors of the full image."""

    def __call__(self, record: Record, index: int, epoch: int | None, where: str) -> torch.Tensor:
        return to_chw_tensor(decode_full(record.image, (record.height, record.width), where))


Decoder = Callable[[Record, int, int | None, str], Any]
DECODERS: dict[str, Callable[[], Decoder]] = {"pil": PilDecoder, "tensor": TensorDecoder}


def resolve_decoder(decoder: str | Decoder) -> Decoder:
    if isinstance(decoder, str):
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODERS)} or pass a decoder object")
        return DECODERS[decoder]()
    if not callable(decoder):
        raise TypeError(f"decoder must be a name or a callable, not {type(decoder).__name__}")
    return decoder


def dct_scale(box: Box, out: tuple[int, int]) -> int:
    """The largest libjpeg scale-down (8, 4, 2, 1) that keeps the box at least ``out`` pixels each way."""
    for s in (8, 4, 2):
        if box[2] >= out[0] * s and box[3] >= out[1] * s:
            return s
    return 1


BACKENDS = ("opencv", "nvimgcodec", "auto")


def installed_backends() -> tuple[str, ...]:
    """The decode backends this installation can run (OpenCV always)."""
    return ("opencv",) + (("nvimgcodec",) if NVIMGCODEC_AVAILABLE else ())


def check_backend(backend: str) -> str:
    """The backend to use: ``"auto"`` is ``"nvimgcodec"`` where installed, else ``"opencv"``; a named one that
    is not installed is an error saying what to install."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "nvimgcodec" if NVIMGCODEC_AVAILABLE else "opencv"
    if backend == "nvimgcodec" and not NVIMGCODEC_AVAILABLE:
        raise DecoderUnavailableError(f"backend='nvimgcodec': {NVIMGCODEC_MISSING}")
    return backend


def resize_aa(pixels: np.ndarray, target: torch.Tensor) -> None:
    """Antialiased bilinear resize of an HxWx3 uint8 array into ``target``, a 3 x H' x W' channels-last view:
    torchvision's own tensor resize (a contiguous copy first: torch's kernel is faster on one)."""
    view = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).unsqueeze(0)
    size = list(target.shape[1:])
    if UPSAMPLE_BILINEAR_AA is not None:  # else the public F.interpolate: the same pixels (tested)
        UPSAMPLE_BILINEAR_AA(view, size, False, None, None, out=target.unsqueeze(0))
    else:
        target.copy_(F.interpolate(view, size=size, mode="bilinear", antialias=True, align_corners=False)[0])


def channels_last_image(height: int, width: int) -> torch.Tensor:
    """An uninitialised uint8 3 x height x width tensor, HxWx3 underneath (as decoders and resizes write)."""
    return torch.empty((height, width, 3), dtype=torch.uint8).permute(2, 0, 1)


def resample(pixels: np.ndarray, target: torch.Tensor) -> None:
    """``pixels`` (HxWx3 uint8) resized into ``target`` (3 x H' x W', channels-last)."""
    if pixels.shape[0] <= target.shape[1] and pixels.shape[1] <= target.shape[2]:
        # enlarging only: antialiasing changes nothing, and OpenCV's bilinear is faster (docs/PERFORMANCE.md)
        out = target.permute(1, 2, 0).numpy()
        resized = cv2.resize(pixels, (target.shape[2], target.shape[1]), dst=out, interpolation=cv2.INTER_LINEAR)
        if resized.ctypes.data != out.ctypes.data:
            out[...] = resized
    else:
        resize_aa(pixels, target)


def decode_plan(record: Record, plan: Plan, size: int, where: str, backend: str = "opencv",
                dest: torch.Tensor | None = None, dct_scaling: bool = False) -> torch.Tensor:
    """The sample ``plan`` describes: a uint8 3 x size x size tensor in channels-last memory (size x size x 3
    underneath: no layout conversion anywhere), written into ``dest`` when given (a batch row)."""
    s = dct_scale(plan.box, plan.resize) if dct_scaling else 1
    if s > 1:
        top, left, height, width = plan.box
        plan = plan._replace(box=(top // s, left // s, max(1, height // s), max(1, width // s)))
    stored = (record.height, record.width)
    if plan.resize != (size, size):  # a window of the resized box (val): resize the box whole, keep the window
        resized = channels_last_image(*plan.resize)
        resize_aa(decode_box(record.image, plan.box, s, stored, where, backend), resized)  # PIL's pixels
        top, left = plan.offset
        window = resized[:, top:top + size, left:left + size]
        target = dest if dest is not None else channels_last_image(size, size)
        return target.copy_(window.flip(2) if plan.flip else window)
    pixels = decode_box(record.image, plan.box, s, stored, where, backend, plan.flip)
    target = dest if dest is not None and dest.permute(1, 2, 0).is_contiguous() else channels_last_image(size, size)
    in_place = target is dest
    resample(pixels, target)
    return target if dest is None or in_place else dest.copy_(target)


# below this many pixels nvImageCodec's per-call cost outweighs what its region decode saves (docs/PERFORMANCE.md)
NVIMGCODEC_MIN_PIXELS = 1 << 17


class FusedDecoder:
    """A plan per sample from ``law``, decoded by :func:`decode_plan` into size x size uint8: every sample
    has one shape (:attr:`output_shape`), so a batch can be decoded straight into one tensor, and the GPU
    decode mode can draw the same plans."""

    def __init__(self, law: CropLaw, backend: str, dct_scaling: bool):
        self.law, self.backend, self.dct_scaling = law, check_backend(backend), dct_scaling

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Every sample's shape: lets ``LmdbImageNet`` decode a batch into one tensor."""
        return 3, self.law.size, self.law.size

    def __call__(self, record: Record, index: int, epoch: int | None, where: str,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        plan = self.law.plan(record.height, record.width, index, epoch)
        check_box(plan.box, record.height, record.width, where)  # before any decoder allocates anything
        backend = self.backend
        if backend == "nvimgcodec" and record.height * record.width < NVIMGCODEC_MIN_PIXELS:
            backend = "opencv"
        return decode_plan(record, plan, self.law.size, where, backend, out, self.dct_scaling)


class RandomResizedCropDecoder(FusedDecoder):
    """Train decoder: RandomResizedCrop(size, scale, ratio) + random horizontal flip, fused with decoding.
    ``dct_scaling`` decodes boxes at least twice the output size at 1/2-1/8 scale: few crops are that large,
    their pixels move a few levels from torchvision's and no prediction of a pretrained model changes, for
    no measurable speed-up: off by default."""

    def __init__(self, size: int = 224, *, scale: tuple[float, float] = SCALE,
                 ratio: tuple[float, float] = RATIO, flip: bool = True, seed: int = 0,
                 backend: str = "opencv", dct_scaling: bool = False):
        super().__init__(RandomResizedCropLaw(size, scale=scale, ratio=ratio, flip=flip, seed=seed), backend,
                         dct_scaling)


class CenterCropDecoder(FusedDecoder):
    """Val decoder: torchvision's ``Resize(resize_size)`` + ``CenterCrop(size)``, exactly (resize_size
    defaults to ``round(size / crop_ratio)``: 256 for 224). ``geometry="ffcv"``: FFCV's centre crop, resized
    (cheaper, but some of a pretrained model's predictions differ from the reference's: docs/PERFORMANCE.md)."""

    def __init__(self, size: int = 224, *, resize_size: int | None = None, crop_ratio: float = CROP_RATIO,
                 geometry: str = GEOMETRIES[0], backend: str = "opencv", dct_scaling: bool = False):
        super().__init__(CenterCropLaw(size, resize_size=resize_size, crop_ratio=crop_ratio, geometry=geometry),
                         backend, dct_scaling)
