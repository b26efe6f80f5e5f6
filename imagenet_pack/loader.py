"""Loader helpers: a DataLoader built for uint8 batches, whose epochs and position are tracked for you.

:func:`build_loader` returns an :class:`EpochLoader`: iterate it once per epoch; it advances its own epoch
(the ``set_epoch`` step cannot be forgotten), counts the samples handed out so ``state_dict()`` saved
mid-epoch resumes with exactly the samples not yet seen, and uses an :class:`EpochSampler` that shards by
``torch.distributed`` rank when a process group is initialised. With a fixed-size decoder (the fused ones)
the workers decode each batch straight into a :class:`BatchRing` slot, shared memory allocated once.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from .sampler import EpochSampler


def shared_empty(shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """An uninitialised tensor allocated in shared memory (``share_memory_()`` would first fill private memory
    and then copy it there)."""
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def empty_batch(shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """An uninitialised batch tensor; in a DataLoader worker it lives in shared memory (as ``default_collate``
    does), so sending it to the main process passes a handle instead of copying the batch once more."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    return shared_empty(shape, dtype)


def empty_images(count: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """(count, C, H, W) uint8 in channels-last memory (every image H x W x C underneath, as the fused decoders
    write it; :func:`empty_batch` rules on where it lives)."""
    channels, height, width = shape
    return empty_batch((count, height, width, channels)).permute(0, 3, 1, 2)


class StackedSamples(list):
    """``(sample, target)`` pairs whose samples are the rows of one batch tensor, ``images``, as
    ``LmdbImageNet.__getitems__`` returns them for a fixed-size decoder: :func:`collate_uint8` passes
    ``images`` on as it is; any other collate function sees an ordinary list of pairs."""

    def __init__(self, images: torch.Tensor, targets: list[int]):
        super().__init__(zip(images, targets))
        self.images = images


def collate_uint8(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack uint8 3xHxW samples into one (N, 3, H, W) uint8 tensor and the targets into int64."""
    targets = torch.tensor([target for _, target in batch], dtype=torch.int64)
    if isinstance(batch, StackedSamples):
        return batch.images, targets
    first = batch[0][0]
    images = torch.stack([sample for sample, _ in batch], out=empty_batch((len(batch), *first.shape), first.dtype))
    return images, targets


def worker_init(worker_id: int) -> None:
    """Seed numpy per worker; one OpenCV thread per worker process (the workers are the parallelism).

    ``cv2.setNumThreads`` deadlocks in a child forked while the parent's OpenCV pool runs, so
    :func:`build_loader` sets 1 in the parent before any worker forks; a spawned worker sets it here.
    """
    np.random.seed(torch.initial_seed() % 2**32)
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


class NumberedBatch(list):
    """The sampler items of one batch and the batch's number in the epoch (which picks its ring slot)."""

    def __init__(self, items: list, number: int):
        super().__init__(items)
        self.number = number


class NumberedBatches:
    """A ``BatchSampler`` over ``sampler`` whose batches carry their number in the epoch."""

    def __init__(self, sampler: EpochSampler, batch_size: int, drop_last: bool):
        self.batches = BatchSampler(sampler, batch_size, drop_last)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[NumberedBatch]:
        for number, items in enumerate(self.batches):
            yield NumberedBatch(items, number)


class BatchRing(Dataset):
    """Workers decode each batch into one of ``slots`` shared-memory batch buffers allocated once, and send
    back only the slot number and the targets.

    Returned the usual way, every batch travels in a fresh shared-memory segment (created, faulted in, its
    file descriptor passed over a socket, unmapped): ~0.2 ms per 224 px image on 2 cores, a tenth of a fused
    decode. Reuse is safe because DataLoader keeps at most ``prefetch_factor * workers`` batches dispatched
    and not yet returned, so with one slot more than that a new batch never lands in the slot of a batch
    still pending or being returned; and :meth:`take` copies each batch out of its slot (into pinned memory
    for CUDA) before the user sees it, so a batch the user keeps is never overwritten.
    """

    def __init__(self, dataset: Dataset, slots: int, batch_size: int, shape: tuple[int, int, int]):
        self.dataset = dataset
        channels, height, width = shape
        # (slot, N, H, W, C): every batch channels-last, as the decoders write it
        self.buffers = shared_empty((slots, batch_size, height, width, channels))
        self._spares: list[tuple[torch.Tensor, int]] = []  # (buffer handed out before, its use count when free)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_spares": []}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, batch: NumberedBatch) -> tuple[int, list]:
        slot = batch.number % len(self.buffers)
        return slot, self.dataset.decode_batch(batch, self.buffers[slot, :len(batch)].permute(0, 3, 1, 2))

    def take(self, slot: int, targets: list, pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy the batch in ``slot`` out to memory of the caller's own."""
        source = self.buffers[slot, :len(targets)]
        images = self._output(source.shape, pin)
        # numpy's single-threaded copy: torch's copy_ would wake the main process's OpenMP pool, whose
        # threads then spin for a while and take CPU from the workers (~0.2 ms per image on 2 cores)
        np.copyto(images.numpy(), source.numpy())
        return images.permute(0, 3, 1, 2), torch.tensor(targets, dtype=torch.int64)

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


_STORAGE_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)  # private; without it, never reuse


def _use_count(tensor: torch.Tensor) -> int:
    """How many tensors (views included) share ``tensor``'s storage, plus a constant (-1: unknown)."""
    if _STORAGE_USE_COUNT is None:
        return -1
    return _STORAGE_USE_COUNT(tensor.untyped_storage()._cdata)


def as_is(batch: Any) -> Any:
    """The collate function of a :class:`BatchRing` loader: the worker already made the batch."""
    return batch


class EpochLoader:
    """Iterate once per epoch; see the module docstring. ``loader`` is the underlying DataLoader."""

    def __init__(self, loader: DataLoader, sampler: EpochSampler, batch_size: int, drop_last: bool,
                 ring: BatchRing | None = None, pin: bool = False):
        self.loader, self.sampler, self.batch_size, self.drop_last = loader, sampler, batch_size, drop_last
        self.ring, self.pin = ring, pin

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def __len__(self) -> int:
        """Batches in a full epoch."""
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if self.ring is not None:
                batch = self.ring.take(*batch, pin=self.pin)
            self.sampler.position += len(batch[1])
            yield batch
        self.finish_epoch()

    def finish_epoch(self) -> None:
        """Move to the next epoch after leaving this one early (e.g. a step limit)."""
        self.sampler.set_epoch(self.sampler.epoch + 1)

    def state_dict(self) -> dict:
        """Epoch and samples consumed so far in it (save it with the model checkpoint)."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def build_loader(dataset: Dataset, batch_size: int, *, train: bool = True, workers: int | None = None,
                 seed: int = 0, prefetch_factor: int = 4, persistent_workers: bool = True,
                 rank: int | None = None, world_size: int | None = None) -> EpochLoader:
    """A uint8-batch loader over ``dataset`` (use a fused decoder or ``decoder="tensor"``).

    ``train`` shuffles every epoch, pads ranks to equal length and drops the last partial batch; eval keeps
    the order and gives every sample to exactly one rank. Memory is pinned when CUDA is available. With
    workers and a dataset that decodes batches in place (``LmdbImageNet.batch_shape``) the batches go through a
    :class:`BatchRing` of ``prefetch_factor * workers + 1`` batch buffers in shared memory.
    """
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    cv2.setNumThreads(1)  # in the parent, before any worker forks (see worker_init)
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train)
    pin = torch.cuda.is_available()
    common = dict(num_workers=workers, worker_init_fn=worker_init if workers else None,
                  persistent_workers=persistent_workers and workers > 0,
                  prefetch_factor=prefetch_factor if workers else None)
    shape = getattr(dataset, "batch_shape", None)
    if workers and shape is not None:
        ring = BatchRing(dataset, prefetch_factor * workers + 1, batch_size, shape)
        loader = DataLoader(ring, batch_sampler=NumberedBatches(sampler, batch_size, drop_last=train),
                            collate_fn=as_is, **common)
        return EpochLoader(loader, sampler, batch_size, drop_last=train, ring=ring, pin=pin)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_uint8, pin_memory=pin,
                        drop_last=train, **common)
    return EpochLoader(loader, sampler, batch_size, drop_last=train)
