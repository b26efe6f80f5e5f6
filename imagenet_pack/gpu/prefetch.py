"""uint8 batches to normalised float batches on the device, overlapped with compute.

Images cross PCIe as uint8 (a quarter of float32's bytes) and are normalised on the GPU, where it costs
nothing measurable. :class:`CudaPrefetcher` copies batch k+1 on a side stream while the model runs on batch k.
On a CPU device the same code runs with synchronous copies, so the numerics and the look-ahead's bookkeeping
are tested without a GPU.
"""
from __future__ import annotations

from collections import deque
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
    """Wrap a loader of (uint8 images, targets); yields normalised images and targets on ``device``.

    It keeps ``depth`` batches ahead of the training loop: their copies (and normalisation) run on a side
    stream while the model computes on the current batch. The look-ahead is the same on every device (on a
    CPU the copies are merely synchronous), so the CPU tests drive the code path CUDA runs. Batches it holds
    ahead are not yet the training loop's: an :class:`~imagenet_pack.loader.loader.EpochLoader` is told, so
    its ``state_dict()`` counts only the samples the loop has received and a resumed run repeats none and
    skips none.
    """

    def __init__(self, loader: Iterable, device: torch.device | str = "cuda", *, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, mean=IMAGENET_MEAN, std=IMAGENET_STD, depth: int = 1):
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self.loader, self.device, self.depth = loader, torch.device(device), depth
        self.options = {"mean": mean, "std": std, "dtype": dtype, "channels_last": channels_last}

    def __len__(self) -> int:
        return len(self.loader)

    def _to_device(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = batch
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        return normalize(images, **self.options), targets

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(device=self.device) if cuda else None
        counts = hasattr(self.loader, "hold")  # an EpochLoader: keep its position the training loop's
        batches = iter(self.loader)
        ahead: deque = deque()  # (images, targets, copy-done event or None)
        while True:
            while len(ahead) <= self.depth:
                batch = next(batches, None)
                if batch is None:
                    break
                if counts:
                    self.loader.hold(len(batch[1]))
                if cuda:
                    with torch.cuda.stream(stream):
                        images, targets = self._to_device(batch)
                        done = torch.cuda.Event()
                        done.record(stream)
                else:
                    (images, targets), done = self._to_device(batch), None
                ahead.append((images, targets, done))
            if not ahead:
                return
            images, targets, done = ahead.popleft()
            if done is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(done)
                images.record_stream(current)
                targets.record_stream(current)
            if counts:
                self.loader.release(len(targets))
            yield images, targets
