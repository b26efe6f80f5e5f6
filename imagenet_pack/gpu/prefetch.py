"""uint8 batches to normalised float batches on the device, overlapped with compute.

Images cross PCIe as uint8 (a quarter of float32's bytes) and are normalised on the GPU, where it costs
nothing measurable. :class:`CudaPrefetcher` copies batch k+1 on a side stream while the model runs on batch k.
On a CPU device the same API works synchronously, so the numerics are tested without a GPU.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor, *, mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype: torch.dtype = torch.float32,
              channels_last: bool = False) -> torch.Tensor:
    """(N, 3, H, W) uint8 RGB -> ``(x / 255 - mean) / std`` in ``dtype`` (computed in float32)."""
    scale = torch.tensor([1 / (255 * s) for s in std], device=images.device).view(1, 3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], device=images.device).view(1, 3, 1, 1)
    out = (images.float() * scale - shift).to(dtype)
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class CudaPrefetcher:
    """Wrap a loader of (uint8 images, targets); yields normalised images and targets on ``device``."""

    def __init__(self, loader: Iterable, device: torch.device | str = "cuda", *, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.loader, self.device = loader, torch.device(device)
        self.options = {"mean": mean, "std": std, "dtype": dtype, "channels_last": channels_last}

    def __len__(self) -> int:
        return len(self.loader)

    def _to_device(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = batch
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        return normalize(images, **self.options), targets

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.device.type != "cuda":
            for batch in self.loader:
                yield self._to_device(batch)
            return
        stream = torch.cuda.Stream(device=self.device)
        pending = None
        for batch in self.loader:
            with torch.cuda.stream(stream):
                ready = self._to_device(batch)
            if pending is not None:
                yield pending
            torch.cuda.current_stream(self.device).wait_stream(stream)
            for tensor in ready:
                tensor.record_stream(torch.cuda.current_stream(self.device))
            pending = ready
        if pending is not None:
            yield pending
