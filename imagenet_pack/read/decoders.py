"""Decoders: turn a record into a sample, ``decoder(record, index, epoch, where)``.

``PilDecoder`` makes ``LmdbImageNet`` a drop-in for ImageFolder (any torchvision transform works);
``TensorDecoder`` returns uint8 CHW tensors of the whole image. The fused crop decoders return uint8 CHW RGB
tensors of the crop only, with no float work on the CPU: the box comes from :mod:`.crops`, then the JPEG is
decoded with libjpeg's DCT scaling (1/2, 1/4, 1/8) whenever the box stays at least the output size at that
scale, so pixels the crop throws away are never fully decoded. With ``backend="nvimgcodec"`` nvImageCodec's
CPU backend also skips the IDCT of the rows and columns outside the box (same pixels; OpenCV stays the
default and the reference). One resize gives the output: torchvision's antialiased bilinear on
uint8 when shrinking, OpenCV's bilinear when only enlarging (antialiasing is a no-op there).
"""
from __future__ import annotations

from typing import Any, Callable, Union

import cv2
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import DecoderUnavailableError
from ..format import Record
from .crops import CenterCropBoxes, RandomResizedCropBoxes
from .pixels import NVIMGCODEC_AVAILABLE, NVIMGCODEC_MISSING, Box, check_box, decode_box, decode_rgb


def to_chw_tensor(rgb) -> torch.Tensor:
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


def dct_scale(box: Box, out: int) -> int:
    """The largest libjpeg scale-down (8, 4, 2, 1) that keeps the box at least ``out`` pixels each way."""
    for s in (8, 4, 2):
        if box[2] >= out * s and box[3] >= out * s:
            return s
    return 1


BACKENDS = ("opencv", "nvimgcodec", "auto")


def installed_backends() -> tuple[str, ...]:
    """The decode backends this installation can run (OpenCV always)."""
    return ("opencv",) + (("nvimgcodec",) if NVIMGCODEC_AVAILABLE else ())


def check_backend(backend: str) -> str:
    """The backend to use: ``"auto"`` is ``"nvimgcodec"`` where installed, else ``"opencv"``; a named one that
    is not installed is an error saying what to install."""
    if backend == "roi":
        raise ValueError("decode backend 'roi' (the libjpeg-turbo C extension) was replaced by 'nvimgcodec' (the "
                         "same region decode from a wheel): pass backend='nvimgcodec' or 'auto'")
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "nvimgcodec" if NVIMGCODEC_AVAILABLE else "opencv"
    if backend == "nvimgcodec" and not NVIMGCODEC_AVAILABLE:
        raise DecoderUnavailableError(f"backend='nvimgcodec': {NVIMGCODEC_MISSING}")
    return backend


# torch's uint8 antialiased bilinear with an ``out=`` argument (private; the public F.interpolate fallback
# gives the same pixels, tested, and costs ~20 us of checks plus one copy per image)
_UPSAMPLE_AA = getattr(getattr(torch._C, "_nn", None), "_upsample_bilinear2d_aa", None)


def resize_aa(crop, target: torch.Tensor) -> None:
    """Antialiased bilinear resize of an HxWx3 uint8 array into ``target``, a 3 x out x out channels-last view.

    An HxWx3 array viewed as 1x3xHxW is channels-last uint8: torch's vectorised antialiased bilinear,
    torchvision's own resize (same pixels), ~2x faster than cv2.INTER_AREA on one thread."""
    view = torch.from_numpy(crop).permute(2, 0, 1).unsqueeze(0)
    size = list(target.shape[1:])
    if _UPSAMPLE_AA is not None:
        _UPSAMPLE_AA(view, size, False, None, None, out=target.unsqueeze(0))
    else:
        target.copy_(F.interpolate(view, size=size, mode="bilinear", antialias=True, align_corners=False)[0])


def decode_crop(data: bytes, box: Box, out: int, flip: bool, where: str, backend: str = "opencv",
                dest: torch.Tensor | None = None) -> torch.Tensor:
    """Decode only as much as ``box`` needs, crop, optionally flip, resize to out x out: a uint8 3 x out x out
    tensor in channels-last memory (out x out x 3 underneath, as libjpeg, OpenCV and torch's uint8 resize
    produce it: no layout conversion anywhere). Written into ``dest`` when given (a batch row)."""
    s = dct_scale(box, out)
    top, left, h, w = (v // s for v in box)
    crop = decode_box(data, (top, left, max(1, h), max(1, w)), s, where, backend, flip)
    in_place = dest is not None and dest.permute(1, 2, 0).is_contiguous()
    target = dest if in_place else torch.empty((out, out, 3), dtype=torch.uint8).permute(2, 0, 1)
    pixels = target.permute(1, 2, 0).numpy()
    if crop.shape[0] <= out and crop.shape[1] <= out:
        # upscaling only: antialiasing changes nothing, and OpenCV's bilinear is ~3x faster than torch's
        resized = cv2.resize(crop, (out, out), dst=pixels, interpolation=cv2.INTER_LINEAR)
        if resized.ctypes.data != pixels.ctypes.data:
            pixels[...] = resized
    else:
        resize_aa(crop, target)
    if dest is not None and not in_place:
        return dest.copy_(target)
    return target


# nvImageCodec's per-call cost outweighs what its region decode saves on small images: measured in the loader
# pipeline on a --max-side 256 database, 3708 images/s against OpenCV's 4217 (full-size ImageNet: 1401 vs 1155)
NVIMGCODEC_MIN_PIXELS = 1 << 17


class _CropDecoder:
    """A crop box (and flip) per sample from ``boxes``, decoded by :func:`decode_crop` into size x size uint8."""

    def __init__(self, size: int, backend: str, boxes: RandomResizedCropBoxes | CenterCropBoxes):
        self.size, self.backend, self.boxes = size, check_backend(backend), boxes

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Every sample's shape: lets ``LmdbImageNet`` decode a batch into one tensor."""
        return 3, self.size, self.size

    def __call__(self, record: Record, index: int, epoch: int | None, where: str,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        box, flip = self.boxes.draw(record.height, record.width, index, epoch)
        check_box(box, record.height, record.width, where)  # before any decoder allocates anything
        backend = self.backend
        if backend == "nvimgcodec" and record.height * record.width < NVIMGCODEC_MIN_PIXELS:
            backend = "opencv"
        return decode_crop(record.image, box, self.size, flip, where, backend, out)


class RandomResizedCropDecoder(_CropDecoder):
    """Train decoder: RandomResizedCrop(size, scale, ratio) + random horizontal flip, fused with decoding."""

    def __init__(self, size: int = 224, *, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True, seed: int = 0,
                 backend: str = "opencv"):
        super().__init__(size, backend, RandomResizedCropBoxes(scale=scale, ratio=ratio, flip=flip, seed=seed))


class CenterCropDecoder(_CropDecoder):
    """Val decoder: resize the shorter side to size / crop_ratio, centre crop size x size (224/256 default)."""

    def __init__(self, size: int = 224, *, crop_ratio: float = 224 / 256, backend: str = "opencv"):
        super().__init__(size, backend, CenterCropBoxes(crop_ratio=crop_ratio))
