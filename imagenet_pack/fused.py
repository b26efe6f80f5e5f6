"""Fused decode + crop decoders: uint8 CHW RGB tensors of the crop only, no float work on the CPU.

The crop box is chosen from the stored image size (no header parse), then the JPEG is decoded with libjpeg's
DCT scaling (1/2, 1/4, 1/8) whenever the box stays at least the output size at that scale, so pixels the crop
throws away are never fully decoded. With ``backend="roi"`` the optional libjpeg-turbo region decoder also
skips the IDCT of the rows and columns outside the box (same pixels; OpenCV stays the default and the
reference). One resize gives the output: torchvision's antialiased bilinear on uint8
when shrinking, OpenCV's bilinear when only enlarging (antialiasing is a no-op there).

Randomness is reproducible per ``(seed, epoch, index)`` when the dataset receives ``(index, epoch)`` pairs;
with plain integer indices it comes from a per-process generator seeded from ``torch.initial_seed()``, which
the DataLoader makes distinct per worker and per epoch.
"""
from __future__ import annotations

import math
import random

import cv2
import torch

from .decode import ROI_AVAILABLE, ROI_MISSING, decode_box
from .format import Record

Box = tuple[int, int, int, int]  # top, left, height, width


def random_resized_crop_box(height: int, width: int, rng: random.Random,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
    """torchvision's ``RandomResizedCrop.get_params``: 10 tries at a random area and aspect, then a centre crop."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop_box(height: int, width: int, crop_ratio: float) -> Box:
    """The centred square ``Resize(size / crop_ratio) + CenterCrop(size)`` keeps, in source pixels."""
    side = max(1, int(crop_ratio * min(height, width)))
    return (height - side) // 2, (width - side) // 2, side, side


def dct_scale(box: Box, out: int) -> int:
    """The largest libjpeg scale-down (8, 4, 2, 1) that keeps the box at least ``out`` pixels each way."""
    for s in (8, 4, 2):
        if box[2] >= out * s and box[3] >= out * s:
            return s
    return 1


BACKENDS = ("opencv", "roi", "auto")


def check_backend(backend: str) -> str:
    """The backend to use: ``"auto"`` is ``"roi"`` where the region decoder was built, else ``"opencv"``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "roi" if ROI_AVAILABLE else "opencv"
    if backend == "roi" and not ROI_AVAILABLE:
        raise RuntimeError(f"backend='roi': {ROI_MISSING}")
    return backend


def decode_crop(data: bytes, box: Box, out: int, flip: bool, where: str, backend: str = "opencv",
                dest: torch.Tensor | None = None) -> torch.Tensor:
    """Decode only as much as ``box`` needs, crop, optionally flip, resize to out x out: a uint8 3 x out x out
    tensor in channels-last memory (out x out x 3 underneath, as libjpeg, OpenCV and torch's uint8 resize
    produce it: no layout conversion anywhere). Written into ``dest`` when given (a batch row)."""
    s = dct_scale(box, out)
    top, left, h, w = (v // s for v in box)
    crop = decode_box(data, (top, left, max(1, h), max(1, w)), s, where, backend == "roi", flip)
    in_place = dest is not None and dest.permute(1, 2, 0).is_contiguous()
    target = dest if in_place else torch.empty((out, out, 3), dtype=torch.uint8).permute(2, 0, 1)
    pixels = target.permute(1, 2, 0).numpy()
    if crop.shape[0] <= out and crop.shape[1] <= out:
        # upscaling only: antialiasing changes nothing, and OpenCV's bilinear is ~3x faster than torch's
        resized = cv2.resize(crop, (out, out), dst=pixels, interpolation=cv2.INTER_LINEAR)
        if resized.ctypes.data != pixels.ctypes.data:
            pixels[...] = resized
    else:
        # an HxWx3 array viewed as 1x3xHxW is channels-last uint8: torch's vectorised antialiased bilinear,
        # torchvision's own resize (same pixels), ~2x faster than cv2.INTER_AREA on one thread; called
        # directly (F.interpolate's checks cost ~20 us) with the channels-last target as its output
        view = torch.from_numpy(crop).permute(2, 0, 1).unsqueeze(0)
        torch._C._nn._upsample_bilinear2d_aa(view, [out, out], False, None, None, out=target.unsqueeze(0))
    if dest is not None and not in_place:
        return dest.copy_(target)
    return target


class _Seeded:
    """Python's Mersenne Twister, seeded per sample (string seeds hash the same in every process): 7 us to
    seed and ~0.2 us a draw, against ~19 us and ~1.7 us for a numpy Generator, per ~2 ms sample."""

    def __init__(self, seed: int):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = seed
        self._rng: random.Random | None = None
        self._torch_seed: int | None = None

    def rng(self, index: int, epoch: int | None) -> random.Random:
        if epoch is not None:
            return random.Random(f"{self.seed}/{epoch}/{index}")
        current = torch.initial_seed()
        if self._rng is None or current != self._torch_seed:
            self._rng, self._torch_seed = random.Random(f"{self.seed}/{current}"), current
        return self._rng


class _CropDecoder:
    """A crop box (and flip) per sample, decoded by :func:`decode_crop` into size x size uint8."""

    def __init__(self, size: int, backend: str):
        self.size, self.backend = size, check_backend(backend)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Every sample's shape: lets ``LmdbImageNet`` decode a batch into one tensor."""
        return 3, self.size, self.size

    def box(self, record: Record, index: int, epoch: int | None) -> tuple[Box, bool]:
        raise NotImplementedError

    def __call__(self, record: Record, index: int, epoch: int | None, where: str,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        box, flip = self.box(record, index, epoch)
        return decode_crop(record.image, box, self.size, flip, where, self.backend, out)


class RandomResizedCropDecoder(_CropDecoder, _Seeded):
    """Train decoder: RandomResizedCrop(size, scale, ratio) + random horizontal flip, fused with decoding."""

    def __init__(self, size: int = 224, *, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True, seed: int = 0,
                 backend: str = "opencv"):
        _CropDecoder.__init__(self, size, backend)
        _Seeded.__init__(self, seed)
        self.scale, self.ratio, self.flip = scale, ratio, flip

    def box(self, record: Record, index: int, epoch: int | None) -> tuple[Box, bool]:
        rng = self.rng(index, epoch)
        box = random_resized_crop_box(record.height, record.width, rng, self.scale, self.ratio)
        return box, self.flip and rng.random() < 0.5


class CenterCropDecoder(_CropDecoder):
    """Val decoder: resize the shorter side to size / crop_ratio, centre crop size x size (224/256 default)."""

    def __init__(self, size: int = 224, *, crop_ratio: float = 224 / 256, backend: str = "opencv"):
        super().__init__(size, backend)
        self.crop_ratio = crop_ratio

    def box(self, record: Record, index: int, epoch: int | None) -> tuple[Box, bool]:
        return center_crop_box(record.height, record.width, self.crop_ratio), False
