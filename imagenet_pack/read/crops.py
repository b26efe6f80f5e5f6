"""The crop law: which pixels of a stored image make a sample, shared by the CPU and GPU decoders.

A law turns an image's stored size (no header is parsed) into a :class:`Plan`: decode ``box`` of the image,
resize it to ``resize``, keep the ``size`` x ``size`` window at ``offset``, mirror it if ``flip``. The two
laws are torchvision's reference transforms, exactly:

* :class:`RandomResizedCropLaw`: ``RandomResizedCrop(size, scale, ratio)`` + ``RandomHorizontalFlip``: the box
  of ``RandomResizedCrop.get_params``, resized to size x size;
* :class:`CenterCropLaw`: ``Resize(resize_size)`` + ``CenterCrop(size)``: the whole image resized so its
  shorter side is ``resize_size`` (the longer ``int(resize_size * long / short)``), then the window at
  ``int(round((side - size) / 2))`` on each axis. Same output size, same scale per axis, same offset. (With
  ``geometry="ffcv"``: FFCV's centre crop instead, the square of ``int(size / resize_size * short)`` source
  pixels resized to size x size: cheaper, but not torchvision's pixels.)

Randomness is reproducible per ``(seed, epoch, index)`` when the dataset receives ``(index, epoch)`` pairs
(as :class:`imagenet_pack.EpochSampler` yields them); with plain integer indices it comes from a per-process
generator seeded from ``torch.initial_seed()``, which the DataLoader makes distinct per worker and per epoch.
"""
from __future__ import annotations

import math
import random
from typing import NamedTuple, Protocol

import torch

from ..contract.codec import resized_size
from .pixels import Box


class Plan(NamedTuple):
    """Where one sample's pixels come from (see the module docstring)."""

    box: Box  # top, left, height, width in the stored image
    resize: tuple[int, int]  # the box resized to (height, width) ...
    offset: tuple[int, int]  # ... of which the size x size window at (top, left) is the sample
    flip: bool


# torchvision's RandomResizedCrop and its reference evaluation crop: the laws' defaults, here only
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
CROP_RATIO = 224 / 256  # CenterCrop(224) of Resize(256)
GEOMETRIES = ("torchvision", "ffcv")


class CropLaw(Protocol):
    """What a fused decoder needs of a law (for type checkers): the output side and a plan per sample."""

    size: int

    def plan(self, height: int, width: int, index: int, epoch: int | None) -> Plan: ...


def random_resized_crop_box(height: int, width: int, rng: random.Random,
                            scale: tuple[float, float] = SCALE, ratio: tuple[float, float] = RATIO) -> Box:
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


def center_crop_plan(height: int, width: int, size: int, resize_size: int) -> Plan:
    """torchvision's ``Resize(resize_size)`` + ``CenterCrop(size)`` as a plan over the whole image."""
    rh, rw = resized_size(height, width, resize_size)
    return Plan((0, 0, height, width), (rh, rw), (int(round((rh - size) / 2)), int(round((rw - size) / 2))), False)


class RandomResizedCropLaw:
    """RandomResizedCrop(size, scale, ratio) boxes and a random horizontal flip, seeded per sample.

    Python's Mersenne Twister, seeded with a string (hashed the same in every process): a few times cheaper
    to seed and draw from than a numpy Generator, which matters once per sample.
    """

    def __init__(self, size: int, *, scale: tuple[float, float] = SCALE, ratio: tuple[float, float] = RATIO,
                 flip: bool = True, seed: int = 0):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.size, self.scale, self.ratio, self.flip, self.seed = size, scale, ratio, flip, seed
        self._rng: random.Random | None = None
        self._torch_seed: int | None = None

    def rng(self, index: int, epoch: int | None) -> random.Random:
        if epoch is not None:
            return random.Random(f"{self.seed}/{epoch}/{index}")
        current = torch.initial_seed()
        if self._rng is None or current != self._torch_seed:
            self._rng, self._torch_seed = random.Random(f"{self.seed}/{current}"), current
        return self._rng

    def plan(self, height: int, width: int, index: int, epoch: int | None) -> Plan:
        rng = self.rng(index, epoch)
        box = random_resized_crop_box(height, width, rng, self.scale, self.ratio)
        return Plan(box, (self.size, self.size), (0, 0), self.flip and rng.random() < 0.5)




class CenterCropLaw:
    """``Resize(resize_size)`` + ``CenterCrop(size)``; never flipped. ``resize_size`` defaults to
    ``round(size / crop_ratio)`` (224 / (224/256) = 256, the reference); ``geometry`` "ffcv" takes FFCV's
    crop-then-resize instead (see the module docstring)."""

    def __init__(self, size: int, *, resize_size: int | None = None, crop_ratio: float = CROP_RATIO,
                 geometry: str = GEOMETRIES[0]):
        if not 0 < crop_ratio <= 1:
            raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
        if geometry not in GEOMETRIES:
            raise ValueError(f"unknown geometry {geometry!r}; choose one of {GEOMETRIES}")
        self.size, self.geometry = size, geometry
        self.resize_size = resize_size if resize_size is not None else round(size / crop_ratio)
        if self.resize_size < size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than the crop size {size}")

    def plan(self, height: int, width: int, index: int, epoch: int | None) -> Plan:
        if self.geometry == "ffcv":
            side = max(1, int(self.size / self.resize_size * min(height, width)))
            return Plan(((height - side) // 2, (width - side) // 2, side, side), (self.size, self.size), (0, 0), False)
        return center_crop_plan(height, width, self.size, self.resize_size)
