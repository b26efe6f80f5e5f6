"""Fused decode + crop decoders: uint8 CHW RGB tensors of the crop only, no float work on the CPU.

The crop box is chosen from the stored image size (no header parse), then the JPEG is decoded with libjpeg's
DCT scaling (1/2, 1/4, 1/8) whenever the box stays at least the output size at that scale, so pixels the crop
throws away are never fully decoded. One resize gives the output: torchvision's antialiased bilinear on uint8
when shrinking, OpenCV's bilinear when only enlarging (antialiasing is a no-op there).

Randomness is reproducible per ``(seed, epoch, index)`` when the dataset receives ``(index, epoch)`` pairs;
with plain integer indices it comes from a per-process generator seeded from ``torch.initial_seed()``, which
the DataLoader makes distinct per worker and per epoch.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .decode import decode_rgb
from .format import Record

Box = tuple[int, int, int, int]  # top, left, height, width


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
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
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
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


def decode_crop(data: bytes, box: Box, out: int, flip: bool, where: str) -> torch.Tensor:
    """Decode only as much as ``box`` needs, crop, resize to out x out, optionally flip: uint8 3xHxW."""
    s = dct_scale(box, out)
    top, left, h, w = (v // s for v in box)
    crop = decode_rgb(data, where, s)[top:top + max(1, h), left:left + max(1, w)]
    if crop.shape[0] <= out and crop.shape[1] <= out:
        # upscaling only: antialiasing changes nothing, and OpenCV's bilinear is ~3x faster than torch's
        resized = torch.from_numpy(cv2.resize(crop, (out, out), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1)
    else:
        # an HxWx3 slice viewed as 1x3xhxw is channels-last uint8: torch's vectorised antialiased bilinear,
        # torchvision's own resize (same pixels), ~2x faster than cv2.INTER_AREA on one thread
        view = torch.from_numpy(crop).permute(2, 0, 1).unsqueeze(0)
        resized = F.interpolate(view, size=(out, out), mode="bilinear", antialias=True, align_corners=False)[0]
    return resized.flip(-1) if flip else resized


class _Seeded:
    def __init__(self, seed: int):
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._torch_seed: int | None = None

    def rng(self, index: int, epoch: int | None) -> np.random.Generator:
        if epoch is not None:
            return np.random.default_rng((self.seed, epoch, index))
        current = torch.initial_seed()
        if self._rng is None or current != self._torch_seed:
            self._rng, self._torch_seed = np.random.default_rng((self.seed, current)), current
        return self._rng


class RandomResizedCropDecoder(_Seeded):
    """Train decoder: RandomResizedCrop(size, scale, ratio) + random horizontal flip, fused with decoding."""

    def __init__(self, size: int = 224, *, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True, seed: int = 0):
        super().__init__(seed)
        self.size, self.scale, self.ratio, self.flip = size, scale, ratio, flip

    def __call__(self, record: Record, index: int, epoch: int | None, where: str) -> torch.Tensor:
        rng = self.rng(index, epoch)
        box = random_resized_crop_box(record.height, record.width, rng, self.scale, self.ratio)
        return decode_crop(record.image, box, self.size, self.flip and rng.random() < 0.5, where)


class CenterCropDecoder:
    """Val decoder: resize the shorter side to size / crop_ratio, centre crop size x size (224/256 default)."""

    def __init__(self, size: int = 224, *, crop_ratio: float = 224 / 256):
        self.size, self.crop_ratio = size, crop_ratio

    def __call__(self, record: Record, index: int, epoch: int | None, where: str) -> torch.Tensor:
        box = center_crop_box(record.height, record.width, self.crop_ratio)
        return decode_crop(record.image, box, self.size, False, where)
