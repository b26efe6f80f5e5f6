"""Shared-memory batch buffers that DataLoader workers decode into, allocated once and reused.

Returned the usual way, every batch travels in a fresh shared-memory segment (created, faulted in, its file
descriptor passed over a socket, unmapped). A :class:`BatchRing` instead has the workers write each batch
into one of a few buffers made once and send back only a :class:`WorkerBatch`: the slot, the targets, how
long the decoding took. For a hybrid feed each slot also has room for the device's rows staged as records
and plans (:mod:`imagenet_pack.read.staged`), so the process that decodes them never reads the database.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset

from ..errors import SharedMemoryError
from ..read.staged import BYTES_PER_ROW, COLUMNS, StagedRecords
from ..torch_private import NEW_SHARED, STORAGE_USE_COUNT
from .sampler import EpochSampler

Index = Any  # what a sampler yields: an index, or an (index, epoch) pair


class BatchSource(Protocol):
    """A dataset that decodes batches in place (``LmdbImageNet`` with a fused decoder): what a
    :class:`BatchRing` needs."""

    batch_shape: tuple[int, int, int] | None

    def __len__(self) -> int: ...

    def decode_into(self, indices: list[Index], images: torch.Tensor) -> list[int]:
        """Decode ``indices`` into the rows of ``images`` (N, C, H, W); return their targets."""

    def stage_and_decode(self, indices: list[Index], staged: StagedRecords, images: torch.Tensor,
                         wanted: Callable[[], int]) -> tuple[list[int], int]:
        """Stage ``indices`` for a decoder elsewhere (those that do not fit: decoded into ``images``), then
        decode rows into ``images`` from the first on while there are fewer than ``wanted()``; (targets, rows
        decoded)."""

SHM = "/dev/shm"


def shared_empty(shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """An uninitialised tensor allocated in shared memory (``share_memory_()`` would first fill private memory
    and then copy it there). ImagenetPackError in one line, naming /dev/shm and the size asked for, when there
    is not that much room."""
    size = math.prod(shape) * dtype.itemsize
    try:
        room = os.statvfs(SHM) if os.path.isdir(SHM) else None
    except OSError:
        room = None
    free = room.f_bavail * room.f_frsize if room is not None else None
    if free is not None and size > free:
        raise SharedMemoryError(_no_room(size, free))
    try:
        if NEW_SHARED is None:  # the public way: the same tensor, filled in private memory first
            return torch.empty(shape, dtype=dtype).share_memory_()
        storage = NEW_SHARED(size)
    except RuntimeError as exc:  # the room went between the check and the allocation
        raise SharedMemoryError(_no_room(size, free) + f" ({str(exc).splitlines()[0][:80]})") from None
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)  # type: ignore[call-overload]  # a private storage


def _no_room(size: int, free: int | None) -> str:
    room = f"{free / 2**20:.0f} MiB free" if free is not None else "not enough room"
    return (f"{SHM}: the loader asks for {size / 2**20:.0f} MiB of shared memory and {SHM} has {room}: use fewer "
            "workers, a smaller batch or prefetch_factor, or a larger /dev/shm (docker run --shm-size=8g)")


class NumberedBatch(list):
    """The sampler's indices of one batch and the batch's number in this iteration (which picks its ring slot)."""

    def __init__(self, indices: list, number: int):
        super().__init__(indices)
        self.number = number


class NumberedBatches:
    """A ``BatchSampler`` over ``sampler`` whose batches carry their number."""

    def __init__(self, sampler: EpochSampler, batch_size: int, drop_last: bool):
        self.batches = BatchSampler(sampler, batch_size, drop_last)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[NumberedBatch]:
        for number, indices in enumerate(self.batches):
            yield NumberedBatch(indices, number)


class WorkerBatch(NamedTuple):
    """What a worker sends back for a batch: no pixels, no bytes."""

    slot: int
    targets: list[int]  # of every row
    cpu_rows: int  # rows decoded into the slot's images (the first ones); the rest are the device's ...
    fallback: bool  # ... except those that did not fit as records, decoded into their image rows too
    seconds: float  # the worker's time decoding its rows (what a row costs the CPU, for a hybrid share)


class BatchRing(Dataset):
    """Workers decode each batch into one of ``slots`` shared-memory batch buffers allocated once, and send
    back a :class:`WorkerBatch`; with ``staged`` (a hybrid feed) each slot also holds every row as a record.

    ``dataset`` is a :class:`BatchSource`. Reuse is safe because DataLoader keeps at most
    ``prefetch_factor * workers`` batches dispatched and not yet returned, so with one slot more than that a
    new batch never lands in the slot of a batch still pending or being returned; and :meth:`take` copies
    each batch out of its slot before the user sees it, so a batch the user keeps is never overwritten.

    The split of a staged batch is decided as late as it can be: a worker stages every row, then decodes rows
    from the first on while they number fewer than what the device share (:meth:`set_share`, one value in
    shared memory that the main process rewrites) leaves to the workers at that moment. A share decided while
    a batch is being decoded applies to its rows not yet decoded.
    """

    def __init__(self, dataset: BatchSource, slots: int, batch_size: int, shape: tuple[int, int, int],
                 staged: bool = False):
        self.dataset, self.is_staged = dataset, staged
        channels, height, width = shape
        # (slot, N, H, W, C): every batch channels-last, as the decoders write it
        self.buffers = shared_empty((slots, batch_size, height, width, channels))
        # room for every row as a record: touched only as far as they fill it (shared memory is allocated lazily)
        rows = batch_size if staged else 0
        self.data = shared_empty((slots, rows * BYTES_PER_ROW)) if staged else \
            torch.empty((slots, 0), dtype=torch.uint8)
        self.table = shared_empty((slots, rows, len(COLUMNS)), torch.int64) if staged else \
            torch.empty((slots, 0, len(COLUMNS)), dtype=torch.int64)
        self.share = shared_empty((1,), torch.float64).fill_(0.0)  # of each batch, left to the device
        self._spares: list[tuple[torch.Tensor, int]] = []  # (buffer handed out before, its use count when free)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_spares": []}

    def __len__(self) -> int:
        return self.dataset.__len__()

    def set_share(self, share: float) -> None:
        """From now on the workers leave ``share`` of each batch's rows not yet decoded to the device."""
        self.share[0] = share

    def cpu_rows(self, size: int) -> int:
        """Rows of a batch of ``size`` the workers decode at the share now set."""
        return size - int(round(size * float(self.share[0])))

    def __getitems__(self, batch: NumberedBatch) -> WorkerBatch:
        """Decode ``batch`` into a slot; staged, decode only the first rows the share now leaves the workers."""
        slot, size = batch.number % len(self.buffers), len(batch)
        images = self.buffers[slot].permute(0, 3, 1, 2)
        started = time.perf_counter()
        if not self.is_staged:
            targets = self.dataset.decode_into(batch, images[:size])
            return WorkerBatch(slot, targets, size, False, time.perf_counter() - started)
        staged = self.staged(slot)
        targets, cpu = self.dataset.stage_and_decode(batch, staged, images, lambda: self.cpu_rows(size))
        fallback = bool((staged.fields["length"][cpu:size] == 0).any())
        return WorkerBatch(slot, targets, cpu, fallback, time.perf_counter() - started)

    def staged(self, slot: int) -> StagedRecords:
        """The staged records of ``slot`` (numpy views of the shared memory)."""
        table = self.table[slot].numpy()
        return StagedRecords(self.data[slot].numpy(), table, len(table))

    def images(self, slot: int) -> torch.Tensor:
        """The batch buffer of ``slot``, (N, H, W, C)."""
        return self.buffers[slot]

    def take(self, batch: WorkerBatch, pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy the batch in its slot out to memory of the caller's own (every row decoded by the workers)."""
        source = self.buffers[batch.slot, :len(batch.targets)]
        images = self._output(source.shape, pin)
        # numpy's single-threaded copy: torch's copy_ would wake the main process's OpenMP pool, whose
        # threads then spin for a while and take CPU from the workers
        np.copyto(images.numpy(), source.numpy())
        targets = torch.tensor(batch.targets, dtype=torch.int64)
        return images.permute(0, 3, 1, 2), targets.pin_memory() if pin else targets

    def _output(self, shape: torch.Size, pin: bool) -> torch.Tensor:
        """Pinned memory from CUDA's caching host allocator, which knows when pending copies are done; else
        a buffer handed out before that no tensor shares any more (its storage's use count is back to what it
        was when only this ring held it), so the 5-40 MB of a batch are not freshly faulted in every step."""
        if pin:
            return torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        for buffer, free in self._spares:
            if buffer.shape == shape and free >= 0 and _use_count(buffer) == free:
                return buffer
        buffer = torch.empty(shape, dtype=torch.uint8)
        if len(self._spares) < 4:
            self._spares.append((buffer, _use_count(buffer)))
        return buffer


def _use_count(tensor: torch.Tensor) -> int:
    """How many tensors (views included) share ``tensor``'s storage, plus a constant (-1: unknown)."""
    if STORAGE_USE_COUNT is None:  # without it, a buffer is never reused
        return -1
    return STORAGE_USE_COUNT(tensor.untyped_storage()._cdata)


def as_is(batch: Any) -> Any:
    """The collate function of a :class:`BatchRing` loader: the worker already made the batch."""
    return batch
