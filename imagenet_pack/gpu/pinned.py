"""Host buffers a hybrid batch is staged in on its way to the device: allocated once, pinned, reused.

A batch's slot in the workers' ring is released as soon as the main process has it (the DataLoader reuses it
a few batches later), so :class:`PinnedBuffers` copies it out at once into one of a few buffers of its own, made
once at the batch size and pinned for a CUDA device: the images the workers decoded, the targets, the device
rows' bytes and plans. Everything the device reads from the host then comes from pinned memory (its copies
are asynchronous), and nothing is allocated per batch (a buffer whose batch's bytes outgrow it grows once).

A buffer is handed out again only once the device has read it. :meth:`PinnedBuffers.take` runs in the thread
that prepares batches, up to two ahead of the one that submits them (:mod:`.lookahead`: one waiting in its
queue, one being submitted), and :meth:`PinnedBuffers.release` records an event once a batch's device work is
queued. So when batch n is taken, batch n - 3 was released; its buffer, the one batch n takes with four
buffers, is n - 4's, released earlier still, and ``take`` waits for that event (in the preparing thread, never
the training loop's) before writing. A buffer taken and not yet released is never handed out: ``take`` raises
(a look-ahead deeper than the buffers is a programming error, not a race). :meth:`PinnedBuffers.reset` starts
a pass: what the last pass took and dropped unreleased is free once the device has passed every event.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..loader.ring import BatchRing, WorkerBatch
from ..read.staged import BYTES_PER_ROW, COLUMNS, StagedRecords
from .decode import Prepared
from .device import Event, host_empty, record_event


class HostBatch(NamedTuple):
    """One batch on the host, as the device stage takes it."""

    images: torch.Tensor  # (rows, 3, H, W) uint8 channels-last: the rows the workers decoded, from row 0
    targets: torch.Tensor  # (N,) int64: every row's
    staged: StagedRecords | None  # rows cpu_rows.. of the batch, staged as records (None: none left)
    cpu_rows: int
    seconds: float  # the workers' time decoding their rows
    buffer: int  # which pinned buffer holds it
    prepared: Prepared | None = None  # the device rows made ready for the decoder, ahead of their submission


class PinnedBuffers:
    """``count`` pinned buffers for batches of ``batch_size`` rows of ``shape`` (C, H, W) bound for
    ``device``, taken in turn (see the module docstring)."""

    def __init__(self, count: int, batch_size: int, shape: tuple[int, int, int], device: torch.device):
        channels, height, width = shape
        self.device = device
        self.images = [host_empty((batch_size, height, width, channels), torch.uint8, device) for _ in range(count)]
        self.targets = [host_empty((batch_size,), torch.int64, device) for _ in range(count)]
        self.data = [host_empty((batch_size * BYTES_PER_ROW,), torch.uint8, device) for _ in range(count)]
        self.tables = [host_empty((batch_size, len(COLUMNS)), torch.int64, device) for _ in range(count)]
        self.read: list[Event | None] = [None] * count  # when the device has read each buffer
        self.held = [False] * count  # taken and not yet released
        self.next = 0

    def reset(self) -> None:
        """Start a pass: every buffer free once the device has read it (batches a pass took ahead and dropped
        were never released)."""
        for event in self.read:
            if event is not None:
                event.synchronize()
        self.held = [False] * len(self.held)

    def take(self, ring: BatchRing, result: WorkerBatch) -> HostBatch:
        """Copy the batch of ``result`` out of its ring slot into the next pinned buffer."""
        k = self.next
        if self.held[k]:
            raise RuntimeError(f"pinned buffer {k} still holds a batch not released: more than {len(self.held)} "
                               "batches taken ahead of the device stage")
        self.next = (k + 1) % len(self.images)
        read = self.read[k]
        if read is not None:
            read.synchronize()  # the device read this buffer's last batch (long since, in practice)
        self.held[k] = True
        size, cpu = len(result.targets), result.cpu_rows
        rows = size if result.fallback else cpu  # rows staged but decoded by the worker sit among the images
        images = self.images[k][:rows]
        # numpy's copy, single-threaded: torch's would wake the OpenMP pool, which then spins on the workers' cores
        np.copyto(images.numpy(), ring.images(result.slot)[:rows].numpy())
        targets = self.targets[k][:size]
        targets.numpy()[:] = result.targets
        staged = None
        if cpu < size:  # the device's rows: their plans, and their bytes (back to back from the first's)
            source = ring.staged(result.slot)
            table = self.tables[k][:size - cpu].numpy()
            np.copyto(table, source.table[cpu:size])
            staged = StagedRecords(self.data[k].numpy(), table, size - cpu)
            fields = staged.fields
            start = int(fields["offset"][0])
            fields["offset"] -= start
            used = int((fields["offset"] + fields["length"]).max())
            if used > len(self.data[k]):  # a batch of unusually large files: this buffer grows, once
                self.data[k] = host_empty((max(used, 2 * len(self.data[k])),), torch.uint8, self.device)
                staged.data = self.data[k].numpy()
            np.copyto(staged.data[:used], source.data[start:start + used])
        return HostBatch(images.permute(0, 3, 1, 2), targets, staged, cpu, result.seconds, k)

    def release(self, batch: HostBatch) -> None:
        """The device work reading ``batch`` is queued on the current stream: its buffer may be reused once
        that work is done."""
        self.read[batch.buffer] = record_event(self.device)
        self.held[batch.buffer] = False
