"""Many crops of different sizes resampled into one uint8 batch, in a number of tensor operations that does not
depend on the batch: the device half of GPU decode mode, run the same on a CPU device.

Each sample's plan says: its decoded box (height x width), resized to ``resize`` (height, width), of which the
size x size window at ``window`` is kept, mirrored if ``flip``. Resampling is separable, so a sample is
``Wy @ box @ Wx^T`` with ``Wy`` (size x height) and ``Wx`` (size x width) the weights of torch's antialiased
bilinear resize (``F.interpolate(antialias=True)``, align_corners=False: torchvision's tensor ``Resize``), the
window taken by choosing which rows of the weights to compute, the flip by reversing ``Wx``'s rows. The whole
batch is two batched matrix products over the boxes padded to the largest (zero weights past each box's own
edge: a box's edge pixels are its own, nothing of another image or of the padding bleeds in), the first
along the rows, the second along the columns of its result. The weights are made on the device from the
plans with a fixed number of element-wise operations.

In float32 throughout (half precision would quantise sample positions and overflow sums on large boxes); with
TF32 matrix products enabled by the caller, results move by well under a level.
"""
from __future__ import annotations

import warnings

import torch

from ..read.staged import (BOX_HEIGHT, BOX_LEFT, BOX_TOP, BOX_WIDTH, FLIP, RESIZE_HEIGHT, RESIZE_WIDTH, WINDOW_LEFT,
                           WINDOW_TOP)


def aa_weights(in_size: torch.Tensor, out_size: torch.Tensor, first: torch.Tensor, count: int, length: int,
               flip: torch.Tensor | None = None, origin: torch.Tensor | None = None) -> torch.Tensor:
    """(n, count, length) float32: for each sample s and i < count, the weights of input indices 0..length-1
    that torch's antialiased bilinear resize from ``in_size[s]`` to ``out_size[s]`` gives output index
    ``first[s] + i`` (``count - 1 - i`` where ``flip[s]``), the input being the ``in_size[s]`` indices from
    ``origin[s]`` on (zero weight everywhere else).

    The same formula as ATen's ``_compute_weights_aa`` (support ``scale`` when shrinking, 1 when enlarging; a
    window clipped to the input and renormalised), for every sample at once."""
    dtype = torch.float32
    in_size = in_size.to(dtype)[:, None, None]
    scale = in_size / out_size.to(dtype)[:, None, None]
    shrinking = scale >= 1.0
    support = torch.where(shrinking, scale, torch.ones_like(scale))
    invscale = torch.where(shrinking, 1.0 / scale, torch.ones_like(scale))
    steps = torch.arange(count, device=in_size.device)
    if flip is not None:
        steps = torch.where(flip.bool()[:, None], count - 1 - steps, steps)
    index = (first[:, None] + steps).to(dtype)[:, :, None]
    center = scale * (index + 0.5)
    low = torch.clamp(torch.floor(center - support + 0.5), min=0.0)
    high = torch.minimum(torch.floor(center + support + 0.5), in_size)
    j = torch.arange(length, device=in_size.device, dtype=dtype)
    if origin is not None:  # the box starts at ``origin`` of a larger input
        j = j - origin.to(dtype)[:, None, None]
    weights = torch.clamp(1.0 - torch.abs((j - center + 0.5) * invscale), min=0.0)
    weights = torch.where((j >= low) & (j < high), weights, torch.zeros((), dtype=dtype, device=in_size.device))
    return weights / weights.sum(-1, keepdim=True)


def pad_boxes(boxes: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
    """(n, height, width * 3) float32: the HxWx3 uint8 ``boxes`` at the top left, zeros elsewhere (three
    operations for the batch, one view per box)."""
    with warnings.catch_warnings():  # torch calls its strided nested tensors a prototype; these two ops are stable
        warnings.filterwarnings("ignore", "The PyTorch API of nested tensors is in prototype stage")
        nested = torch.nested.as_nested_tensor([box.reshape(box.shape[0], -1) for box in boxes])
    return nested.to(torch.float32).to_padded_tensor(0.0, output_size=(len(boxes), height, width * 3))


def resample_boxes(images: list[torch.Tensor], plans: torch.Tensor, size: int) -> torch.Tensor:
    """(n, size, size, 3) uint8, channels last: each decoded image (HxWx3 uint8, on one device) resampled as
    its row of ``plans`` (an int64 table with :mod:`imagenet_pack.read.staged`'s columns) says: its box at
    (``BOX_TOP``, ``BOX_LEFT``) of the image (0, 0 where the image is the box alone), resized, windowed,
    flipped."""
    plans = plans.to(images[0].device)
    height, width = max(b.shape[0] for b in images), max(b.shape[1] for b in images)
    padded = pad_boxes(images, height, width)
    rows = aa_weights(plans[:, BOX_HEIGHT], plans[:, RESIZE_HEIGHT], plans[:, WINDOW_TOP], size, height,
                      origin=plans[:, BOX_TOP])
    columns = aa_weights(plans[:, BOX_WIDTH], plans[:, RESIZE_WIDTH], plans[:, WINDOW_LEFT], size, width,
                         plans[:, FLIP], plans[:, BOX_LEFT])
    n = len(images)
    tall = torch.bmm(rows, padded)  # (n, size, width * 3): the output rows, every input column
    # the columns next: (n, width, size * 3) so that one batched product does every output row at once
    across = tall.view(n, size, width, 3).transpose(1, 2).reshape(n, width, size * 3)
    out = torch.bmm(columns, across).view(n, size, size, 3)  # (n, x, y, 3)
    return out.transpose(1, 2).round_().clamp_(0, 255).to(torch.uint8)  # (n, y, x, 3)
