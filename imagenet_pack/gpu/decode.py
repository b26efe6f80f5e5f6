"""GPU decode mode: workers ship JPEG bytes and crop boxes; the GPU decodes (nvJPEG), crops, resizes, flips.

When CPU cores are the bottleneck, moving the decode to the GPU frees them. The dataset yields
``(jpeg bytes as a uint8 tensor, box)`` with :class:`CropBoxDecoder` (box = top, left, height, width, flip,
drawn exactly as the fused CPU decoders draw them); :func:`collate_jpeg` keeps the variable-length byte
tensors as a list; :class:`GpuBatchDecoder` decodes a batch with one batched
``torchvision.io.decode_jpeg(..., device="cuda")`` call and returns uint8 (N, 3, S, S) on the device, ready
for :func:`imagenet_pack.gpu.normalize`. Records the GPU decoder refuses are decoded on the CPU with OpenCV.
Everything but the nvJPEG call runs on any device, so it is tested on the CPU.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.io as tio

from ..format import Record
from ..read.crops import CenterCropBoxes, RandomResizedCropBoxes
from ..read.pixels import decode_rgb


class CropBoxDecoder:
    """Yields ``(bytes tensor, int64 box [top, left, height, width, flip])``: train (random) or val (centre),
    drawn by the same law and seeds as the fused CPU decoders."""

    def __init__(self, *, train: bool = True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), crop_ratio: float = 224 / 256,
                 flip: bool = True, seed: int = 0):
        self.boxes = (RandomResizedCropBoxes(scale=scale, ratio=ratio, flip=flip, seed=seed) if train
                      else CenterCropBoxes(crop_ratio=crop_ratio))

    def __call__(self, record: Record, index: int, epoch: int | None, where: str):
        box, flip = self.boxes.draw(record.height, record.width, index, epoch)
        data = torch.frombuffer(bytearray(record.image), dtype=torch.uint8)
        return data, torch.tensor([*box, int(flip)], dtype=torch.int64)


def collate_jpeg(batch):
    """-> (list of byte tensors, (N, 5) boxes, (N,) targets)."""
    data = [sample[0] for sample, _ in batch]
    boxes = torch.stack([sample[1] for sample, _ in batch])
    return data, boxes, torch.tensor([target for _, target in batch], dtype=torch.int64)


class GpuBatchDecoder:
    """Decode, crop, resize (bilinear, antialiased) and flip a batch on ``device``: uint8 (N, 3, size, size)."""

    def __init__(self, size: int = 224, device: torch.device | str = "cuda"):
        self.size, self.device = size, torch.device(device)
        self.fallbacks = 0  # images the device decoder refused, decoded on the CPU instead

    def decode(self, data: list[torch.Tensor]) -> list[torch.Tensor]:
        try:
            return list(tio.decode_jpeg(data, mode=tio.ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            return [self._decode_one(d) for d in data]

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor:
        try:
            return tio.decode_jpeg(data, mode=tio.ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            self.fallbacks += 1
            rgb = decode_rgb(data.numpy().tobytes(), "GPU decode fallback")
            return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).to(self.device)

    def __call__(self, data: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        out = torch.empty((len(data), 3, self.size, self.size), dtype=torch.uint8, device=self.device)
        for i, (image, box) in enumerate(zip(self.decode(data), boxes.tolist())):
            top, left, h, w, flip = box
            crop = image[:, top:top + h, left:left + w].unsqueeze(0).float()
            crop = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", antialias=True,
                                 align_corners=False)
            crop = crop.round_().clamp_(0, 255).to(torch.uint8)[0]
            out[i] = crop.flip(-1) if flip else crop
        return out
