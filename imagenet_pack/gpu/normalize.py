"""uint8 RGB batches to normalised float batches, on the device they are on.

Images cross PCIe as uint8 (a quarter of float32's bytes) and are normalised on the GPU, where it costs
nothing measurable. The constants are made once per device (a per-call ``torch.tensor(..., device=)`` is a
host-to-device copy, and a host sync on the default stream); their copy is queued on the stream that first
asked for them, so a stream that uses them later waits on that copy's event (no host sync).
"""
from __future__ import annotations

import torch

from .device import Event, pins, record_event, wait_for

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CONSTANTS: dict[tuple, tuple[torch.Tensor, torch.Tensor, Event | None]] = {}


def _constants(device: torch.device, mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    key = (device, tuple(mean), tuple(std))
    if key not in _CONSTANTS:
        scale = torch.tensor([1 / (255 * s) for s in std], dtype=torch.float32).view(1, 3, 1, 1)
        shift = torch.tensor([m / s for m, s in zip(mean, std)], dtype=torch.float32).view(1, 3, 1, 1)
        if pins(device):
            scale, shift = scale.pin_memory(), shift.pin_memory()
        scale, shift = scale.to(device, non_blocking=True), shift.to(device, non_blocking=True)
        _CONSTANTS[key] = (scale, shift, record_event(device))
    scale, shift, copied = _CONSTANTS[key]
    wait_for(device, copied)
    return scale, shift


def normalize(images: torch.Tensor, *, mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype: torch.dtype = torch.float32,
              channels_last: bool = False) -> torch.Tensor:
    """(N, 3, H, W) uint8 RGB -> ``(x / 255 - mean) / std`` in ``dtype`` (computed in float32)."""
    scale, shift = _constants(images.device, mean, std)
    out = (images.float() * scale - shift).to(dtype)
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
