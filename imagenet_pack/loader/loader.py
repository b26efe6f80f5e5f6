"""Loader helpers: a DataLoader built for uint8 batches, whose epochs and position are tracked for you.

:func:`build_loader` returns an :class:`EpochLoader`: iterate it once per epoch; it advances its own epoch
(the ``set_epoch`` step cannot be forgotten), counts the samples handed out so ``state_dict()`` saved
mid-epoch resumes with exactly the samples not yet seen, and uses an :class:`EpochSampler` that shards by
``torch.distributed`` rank when a process group is initialised. With a fixed-size decoder (the fused ones)
the workers decode each batch straight into a :class:`BatchRing` slot, shared memory allocated once.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..machine import default_workers
from .ring import BatchRing, NumberedBatches, as_is, shared_empty
from .sampler import EpochSampler


def empty_batch(shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """An uninitialised batch tensor; in a DataLoader worker it lives in shared memory (as ``default_collate``
    does), so sending it to the main process passes a handle instead of copying the batch once more."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    return shared_empty(shape, dtype)


def collate_uint8(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack uint8 3xHxW samples into one (N, 3, H, W) uint8 tensor and the targets into int64."""
    targets = torch.tensor([target for _, target in batch], dtype=torch.int64)
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


class EpochLoader:
    """Iterate once per epoch; see the module docstring. ``loader`` is the underlying DataLoader."""

    def __init__(self, loader: DataLoader, sampler: EpochSampler, batch_size: int, drop_last: bool,
                 ring: BatchRing | None = None, pin: bool = False, gpu: Any = None):
        self.loader, self.sampler, self.batch_size, self.drop_last = loader, sampler, batch_size, drop_last
        self.ring, self.pin, self.gpu = ring, pin, gpu
        self.held, self._ended = 0, False  # samples a look-ahead holds; the epoch's batches all handed out

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def __len__(self) -> int:
        """Batches in a full epoch."""
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def gpu_share(self) -> float:
        """The share of each batch decoded on the device (0: all by the CPU workers)."""
        return self.ring.gpu_share if self.ring is not None else 0.0

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if self.ring is not None:
                slot, targets, encoded = batch
                batch = self.ring.take(slot, targets, pin=self.pin)
                if encoded is not None:
                    batch = self._merge(batch, encoded)
            self.sampler.position += len(batch[1])
            yield batch
        self._ended = True
        if not self.held:
            self.finish_epoch()

    def _merge(self, batch: tuple[torch.Tensor, torch.Tensor], encoded: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """The CPU workers' rows, then the device-decoded rest of the batch: the sampler's order, on the device."""
        data, boxes, targets = encoded
        decoded = self.gpu(data, torch.tensor(boxes, dtype=torch.int64))
        images = torch.cat([batch[0].to(decoded.device, non_blocking=True), decoded])
        targets = torch.cat([batch[1], torch.tensor(targets, dtype=torch.int64)]).to(decoded.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last), targets

    @property
    def position(self) -> int:
        """Samples of this rank's share the training loop has received this run (not those held ahead)."""
        return self.sampler.position - self.held

    def hold(self, samples: int) -> None:
        """A look-ahead (e.g. :class:`~imagenet_pack.gpu.prefetch.CudaPrefetcher`) took ``samples`` that the
        training loop has not received yet: they do not count as consumed."""
        self.held += samples

    def release(self, samples: int) -> None:
        """The look-ahead handed ``samples`` on to the training loop."""
        self.held -= samples
        if self._ended and not self.held:
            self.finish_epoch()

    def finish_epoch(self) -> None:
        """Move to the next epoch (called at the end of one, or after leaving it early, e.g. a step limit)."""
        self.held, self._ended = 0, False
        self.sampler.set_epoch(self.sampler.epoch + 1)

    def state_dict(self) -> dict:
        """Epoch and samples the training loop received so far in it (save it with the model checkpoint)."""
        return self.sampler.state_dict(position=self.position)

    def load_state_dict(self, state: dict) -> None:
        self.held, self._ended = 0, False
        self.sampler.load_state_dict(state)


def build_loader(dataset: Dataset, batch_size: int, *, train: bool = True, workers: int | None = None,
                 seed: int = 0, prefetch_factor: int = 4, persistent_workers: bool = True,
                 rank: int | None = None, world_size: int | None = None, gpu_share: float | str = 0.0,
                 device: torch.device | str = "cuda") -> EpochLoader:
    """A uint8-batch loader over ``dataset`` (use a fused decoder or ``decoder="tensor"``).

    ``train`` shuffles every epoch, pads ranks to equal length and drops the last partial batch; eval keeps
    the order and gives every sample to exactly one rank. Memory is pinned when CUDA is available. With
    workers and a dataset that decodes batches in place (``LmdbImageNet.batch_shape``) the batches go through a
    :class:`BatchRing` of ``prefetch_factor * workers + 1`` batch buffers in shared memory.

    ``gpu_share`` (a hybrid feed, fused decoders only): that share of every batch (its last samples) is
    decoded on ``device`` by :class:`~imagenet_pack.gpu.decode.GpuBatchDecoder` while the CPU workers decode
    the rest; batches then arrive on the device, in the sampler's order, with the same crops (same law and
    seeds) and the same exact resume. ``"auto"`` measures both rates once and splits in proportion
    (:attr:`EpochLoader.gpu_share` tells the share chosen).
    """
    workers = default_workers() if workers is None else workers
    cv2.setNumThreads(1)  # in the parent, before any worker forks (see worker_init)
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train)
    pin = torch.cuda.is_available()
    common = dict(num_workers=workers, worker_init_fn=worker_init if workers else None,
                  persistent_workers=persistent_workers and workers > 0,
                  prefetch_factor=prefetch_factor if workers else None)
    shape = getattr(dataset, "batch_shape", None)
    gpu = None
    if gpu_share:
        if not workers or shape is None or not hasattr(dataset, "encoded_batch"):
            raise ValueError("gpu_share needs loader workers and an LmdbImageNet with a fused decoder")
        from ..gpu.decode import GpuBatchDecoder
        gpu = GpuBatchDecoder(shape[1], device)
        gpu_share = measured_share(dataset, gpu, workers) if gpu_share == "auto" else float(gpu_share)
        if not 0.0 <= gpu_share <= 1.0:
            raise ValueError(f"gpu_share must be in [0, 1] or 'auto', got {gpu_share}")
    if workers and shape is not None:
        ring = BatchRing(dataset, prefetch_factor * workers + 1, batch_size, shape, gpu_share=gpu_share)
        loader = DataLoader(ring, batch_sampler=NumberedBatches(sampler, batch_size, drop_last=train),
                            collate_fn=as_is, **common)
        return EpochLoader(loader, sampler, batch_size, drop_last=train, ring=ring, pin=pin, gpu=gpu)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_uint8, pin_memory=pin,
                        drop_last=train, **common)
    return EpochLoader(loader, sampler, batch_size, drop_last=train)


def measured_share(dataset: Any, gpu: Any, workers: int, samples: int = 64) -> float:
    """The device's share of a batch that keeps both sides busy: its decode rate over the sum of both rates
    (the CPU's: ``workers`` processes at the rate one process decodes here), each timed on ``samples``
    samples after a warm-up."""
    count = min(samples, len(dataset))
    items = [(i, 0) for i in range(count)]
    images = torch.empty((count, *dataset.batch_shape), dtype=torch.uint8)
    dataset.decode_batch(items[:4], images[:4])
    started = time.perf_counter()
    dataset.decode_batch(items, images)
    cpu_rate = workers * count / (time.perf_counter() - started)
    data, boxes, _ = dataset.encoded_batch(items)
    boxes = torch.tensor(boxes, dtype=torch.int64)
    gpu(data[:4], boxes[:4])
    if gpu.device.type == "cuda":
        torch.cuda.synchronize(gpu.device)
    started = time.perf_counter()
    gpu(data, boxes)
    if gpu.device.type == "cuda":
        torch.cuda.synchronize(gpu.device)
    gpu_rate = count / (time.perf_counter() - started)
    return round(gpu_rate / (gpu_rate + cpu_rate), 3)
