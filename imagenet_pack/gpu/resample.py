"""Many boxes of different sizes resampled into one uint8 batch by two Triton kernels, with work proportional
to the boxes: the device half of GPU decode mode.

Each sample's :class:`Boxes` row says where its decoded box lies (an address and strides: the boxes are read
where the decoder wrote them, no copy, no padding), its size, the size it is resized to, the window kept
and whether it is mirrored, and which row of the output batch it fills. Resampling is separable: the first
kernel resizes each box along its rows, for the ``size`` output rows of its window only, into a float32
buffer of ``size`` x box width per sample; the second resizes those along the columns of the window, flips by
indexing, rounds and writes uint8 straight into the channels-last batch. Each output value reads only its
filter's taps (at most ``2 * support + 1``), whose weights are computed in the kernel by ATen's
antialiased-bilinear formula (``_compute_weights_aa``: support ``scale`` when shrinking, 1 when enlarging, a
window clipped to the input, renormalised), as torchvision's tensor ``Resize(antialias=True)``.

Precision: float32 taps and sums throughout (no matrix products, so no TF32; half-precision taps would
quantise a 255-level value to 1/8 of a level before summing): against the CPU fused decoders, mean
difference well under a level (measured by the tests and ``tools/gpu_check.py``).

Two launches per batch whatever its size, no host synchronisation (every size is on the host already, in the
plans), and one host-to-device copy of the rows, from pinned memory. On a CPU device the same kernels run
under Triton's interpreter, so the CPU tests run the very code a GPU runs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from .device import is_cuda

try:
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # CPU-only torch wheels come without Triton: GPU decode mode then says so when asked
    triton = None

TRITON_MISSING = ("GPU decode mode needs Triton, which ships with CUDA builds of torch (pip install triton for a "
                  "CPU-only torch)")

# the columns of a Boxes row (int64)
(ADDRESS, ROW_STRIDE, PIXEL_STRIDE, CHANNEL_STRIDE, HEIGHT, WIDTH, OUT_HEIGHT, OUT_WIDTH, TOP, LEFT, MIRROR,
 OUT_ROW, MIDDLE) = range(13)
COLUMNS = 13


class Decoded(NamedTuple):
    """A decoded image on the device, as the kernels read it: the address of its first byte, its (row, pixel,
    channel) strides in bytes, where the box starts in it ((0, 0) where the image is the box alone), and the
    object that owns the memory."""

    address: int
    strides: tuple[int, int, int]
    top: int
    left: int
    owner: Any


class Boxes(NamedTuple):
    """What the kernels read of a batch: ``table`` one int64 row per box (the columns above), on the host;
    ``middle`` the float32 elements the first pass writes for all of them; ``keep`` the objects that own the
    boxes' memory (alive until the kernels are queued; on CUDA the decoder's buffers are stream-ordered)."""

    table: np.ndarray
    middle: int
    keep: list[Any]


def box_rows(plans: np.ndarray, rows: np.ndarray, images: list[Decoded], size: int, first: int) -> Boxes:
    """The :class:`Boxes` of staged ``rows`` (``plans``: the staged rows' fields by name,
    :attr:`imagenet_pack.read.staged.StagedRecords.fields`), decoded as ``images``; sample ``r`` fills output
    row ``first + rows[r]``."""
    table = np.empty((len(rows), COLUMNS), np.int64)
    for k, image in enumerate(images):
        table[k, ADDRESS] = image.address + image.top * image.strides[0] + image.left * image.strides[1]
        table[k, ROW_STRIDE:HEIGHT] = image.strides
    plan = plans[rows]
    table[:, HEIGHT] = plan["box_height"]
    table[:, WIDTH] = plan["box_width"]
    table[:, OUT_HEIGHT] = plan["resize_height"]
    table[:, OUT_WIDTH] = plan["resize_width"]
    table[:, TOP] = plan["window_top"]
    table[:, LEFT] = plan["window_left"]
    table[:, MIRROR] = plan["flip"]
    table[:, OUT_ROW] = first + rows
    widths = size * 3 * plan["box_width"]
    table[:, MIDDLE] = np.cumsum(widths) - widths
    return Boxes(table, int(widths.sum()), [image.owner for image in images])


def _rows_kernel(table_address, middle_address, size, BY: tl.constexpr, BX: tl.constexpr):
    """Pass 1: the window's ``size`` output rows of box ``program_id(0)``, every box column, into ``middle``.
    Reads are clamped inside the box (a tap past its window has weight 0), so none needs a mask."""
    n = tl.program_id(0)
    row = table_address.to(tl.pointer_type(tl.int64)) + n * 13
    src = tl.load(row + 0).to(tl.pointer_type(tl.uint8))
    row_stride, pixel_stride, channel_stride = tl.load(row + 1), tl.load(row + 2), tl.load(row + 3)
    height, width = tl.load(row + 4).to(tl.int32), tl.load(row + 5).to(tl.int32)
    scale = height.to(tl.float32) / tl.load(row + 6).to(tl.float32)
    top = tl.load(row + 8).to(tl.int32)
    out = middle_address.to(tl.pointer_type(tl.float32)) + tl.load(row + 12)
    support = tl.maximum(scale, 1.0)  # ATen: the filter's support is scale when shrinking, 1 when enlarging
    invscale = 1.0 / support
    taps = (2.0 * support).to(tl.int32) + 1  # the most taps any output index has
    i = tl.program_id(1) * BY + tl.arange(0, BY)
    center = scale * ((top + i).to(tl.float32) + 0.5)
    low = tl.maximum((center - support + 0.5).to(tl.int32), 0)  # truncating casts, as ATen's int64 ones
    count = tl.minimum((center + support + 0.5).to(tl.int32), height) - low
    total = tl.full((BY,), 0.0, tl.float32)
    for k in range(taps):
        w = tl.maximum(1.0 - tl.abs(((low + k).to(tl.float32) - center + 0.5) * invscale), 0.0)
        total += tl.where(k < count, w, 0.0)
    total = tl.where(total == 0.0, 1.0, total)
    length = width * 3
    store_rows = (i < size)[:, None]
    for x0 in range(0, length, BX):
        x = x0 + tl.arange(0, BX)
        xc = tl.minimum(x, length - 1)
        across = src + ((xc // 3).to(tl.int64) * pixel_stride + (xc % 3).to(tl.int64) * channel_stride)[None, :]
        acc = tl.full((BY, BX), 0.0, tl.float32)
        for k in range(taps):
            w = tl.maximum(1.0 - tl.abs(((low + k).to(tl.float32) - center + 0.5) * invscale), 0.0)
            w = tl.where(k < count, w, 0.0) / total
            down = tl.minimum(low + k, height - 1).to(tl.int64) * row_stride
            acc += w[:, None] * tl.load(across + down[:, None]).to(tl.float32)
        tl.store(out + i[:, None].to(tl.int64) * length + x[None, :], acc, mask=store_rows & (x < length)[None, :])


def _columns_kernel(table_address, middle_address, batch_address, size, BY: tl.constexpr, BX: tl.constexpr):
    """Pass 2: the window's ``size`` columns of pass 1's rows of box ``program_id(0)``, mirrored if asked,
    rounded to uint8 into its row of ``batch`` (N, size, size, 3). Reads are clamped as in pass 1."""
    n = tl.program_id(0)
    row = table_address.to(tl.pointer_type(tl.int64)) + n * 13
    width = tl.load(row + 5).to(tl.int32)
    scale = width.to(tl.float32) / tl.load(row + 7).to(tl.float32)
    left = tl.load(row + 9).to(tl.int32)
    mirror = tl.load(row + 10)
    dst = batch_address.to(tl.pointer_type(tl.uint8)) + tl.load(row + 11) * size * size * 3
    support = tl.maximum(scale, 1.0)
    invscale = 1.0 / support
    taps = (2.0 * support).to(tl.int32) + 1
    i = tl.program_id(1) * BY + tl.arange(0, BY)
    rows = middle_address.to(tl.pointer_type(tl.float32)) + tl.load(row + 12) + \
        (tl.minimum(i, size - 1).to(tl.int64) * (width * 3))[:, None]
    store_rows = (i < size)[:, None]
    for x0 in range(0, size * 3, BX):
        x = x0 + tl.arange(0, BX)
        j = x // 3
        j = tl.where(mirror != 0, size - 1 - j, j)
        channel = x % 3
        center = scale * ((left + j).to(tl.float32) + 0.5)
        low = tl.maximum((center - support + 0.5).to(tl.int32), 0)
        count = tl.minimum((center + support + 0.5).to(tl.int32), width) - low
        total = tl.full((BX,), 0.0, tl.float32)
        acc = tl.full((BY, BX), 0.0, tl.float32)
        for k in range(taps):
            w = tl.maximum(1.0 - tl.abs(((low + k).to(tl.float32) - center + 0.5) * invscale), 0.0)
            w = tl.where(k < count, w, 0.0)
            total += w
            across = tl.minimum(tl.maximum(low + k, 0), width - 1) * 3 + channel
            acc += w[None, :] * tl.load(rows + across[None, :])
        total = tl.where(total == 0.0, 1.0, total)
        value = tl.minimum(tl.maximum(tl.floor(acc / total[None, :] + 0.5), 0.0), 255.0)
        tl.store(dst + i[:, None].to(tl.int64) * (size * 3) + x[None, :], value.to(tl.uint8),
                 mask=store_rows & (x < size * 3)[None, :])


_KERNELS: dict[bool, tuple[Any, Any]] = {}


def _kernels(cuda: bool) -> tuple[Any, Any]:
    """The two kernels compiled for a GPU, or run by Triton's interpreter on a CPU device."""
    if triton is None:
        from ..errors import DecoderUnavailableError
        raise DecoderUnavailableError(TRITON_MISSING)
    if cuda not in _KERNELS:
        wrap: Callable[[Any], Any] = triton.jit if cuda else InterpretedFunction
        _KERNELS[cuda] = (wrap(_rows_kernel), wrap(_columns_kernel))
    return _KERNELS[cuda]


BLOCKS = (8, 128)  # a GPU's tile: output rows x (column, channel) values


def _interpreter_tile(length: int) -> int:
    """The tile width (a power of two) that covers ``length`` values with the least padding, each extra tile
    counted as 128 values of overhead."""
    return min((256, 512, 1024), key=lambda tile: (-(-length // tile)) * (tile + 128))


def resample_boxes(boxes: Boxes, batch: torch.Tensor, size: int) -> None:
    """Write each box of ``boxes`` resampled into its row of ``batch`` ((N, 3, size, size) uint8, channels last,
    on the device), queued on the current stream."""
    device = batch.device
    cuda = is_cuda(device)
    rows_kernel, columns_kernel = _kernels(cuda)
    table = torch.from_numpy(boxes.table)
    if cuda:  # from pinned memory: an asynchronous copy (the caching host allocator keeps it until it is done)
        table = table.pin_memory().to(device, non_blocking=True)
    middle = torch.empty(max(boxes.middle, 1), dtype=torch.float32, device=device)
    nhwc = batch.permute(0, 2, 3, 1)
    if not nhwc.is_contiguous():
        raise ValueError("resample_boxes writes a channels-last batch")
    if cuda:
        (by, bx), (by2, bx2) = BLOCKS, BLOCKS
    else:  # the interpreter pays per operation and per element loaded: tall tiles, as wide as wastes least
        by = by2 = triton.next_power_of_2(size)
        bx = _interpreter_tile(int(np.median(boxes.table[:, WIDTH])) * 3)
        bx2 = _interpreter_tile(size * 3)
    # addresses, not tensors: the kernels read boxes by address anyway, and the interpreter then copies nothing
    rows_kernel[(len(boxes.table), triton.cdiv(size, by))](table.data_ptr(), middle.data_ptr(), size, BY=by, BX=bx)
    columns_kernel[(len(boxes.table), triton.cdiv(size, by2))](table.data_ptr(), middle.data_ptr(), nhwc.data_ptr(),
                                                               size, BY=by2, BX=bx2)
