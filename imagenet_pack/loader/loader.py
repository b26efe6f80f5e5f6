"""Loader helpers: a DataLoader built for uint8 batches, whose epochs and deliveries are tracked for you.

:func:`epoch_loader` returns an :class:`EpochLoader`: iterate it once per epoch; it advances its own epoch
(the ``set_epoch`` step cannot be forgotten), counts the samples delivered to the training loop so
``state_dict()`` saved mid-epoch resumes with exactly the samples not yet seen, and uses an
:class:`EpochSampler` that shards by ``torch.distributed`` rank when a process group is initialised. With a
fixed-size decoder (the fused ones) the workers decode each batch straight into a :class:`BatchRing` slot,
shared memory allocated once.

A look-ahead (:class:`~imagenet_pack.gpu.prefetch.CudaPrefetcher`) runs ahead of the training loop through
the :class:`Feed` interface: it takes :meth:`EpochLoader.batches` (not counted) and reports each batch the loop
receives with :meth:`EpochLoader.deliver`. Batches it held ahead and never handed on are not lost: the next
iteration starts from the first sample not delivered.
"""
from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import ImagenetPackError
from ..read.dataset import in_place_shape
from .options import LoaderOptions
from .ring import BatchRing, NumberedBatches, as_is, shared_empty
from .sampler import EpochSampler

BatchT = TypeVar("BatchT")


class Feed(abc.ABC, Generic[BatchT]):
    """What :func:`imagenet_pack.build_loader` returns: a stateful loader of uint8 batches (torchdata's
    ``StatefulDataLoader`` protocol: iterate it once per epoch, ``state_dict()`` saved mid-epoch resumes with
    exactly the samples not yet delivered) that a look-ahead (:class:`~imagenet_pack.gpu.prefetch.CudaPrefetcher`)
    can run ahead of: host-side batches of type ``BatchT``, a way to say which the training loop received, and
    the copy of a batch to the device (which a hybrid feed also decodes on).

    ``sampler`` is its :class:`EpochSampler`; ``delivered`` the samples of this rank's share of the epoch the
    training loop received this run; ``gpu_share`` the share of each batch decoded on the device."""

    sampler: EpochSampler
    host_ahead = 0  # batches a look-ahead draws from batches() in a thread of their own, ahead of to_device

    @property
    @abc.abstractmethod
    def epoch(self) -> int:
        """The epoch the next batch belongs to."""

    @property
    @abc.abstractmethod
    def delivered(self) -> int:
        """Samples of this rank's share of the epoch the training loop received this run."""

    @property
    def gpu_share(self) -> float:
        """The share of each batch decoded on the device (as last decided): none for the CPU loader."""
        return 0.0

    @abc.abstractmethod
    def __len__(self) -> int:
        """Batches in a full epoch (also after resuming mid-epoch)."""

    @abc.abstractmethod
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, int64 targets) of this epoch's remaining batches; the epoch advances at its end."""

    @abc.abstractmethod
    def batches(self) -> Iterator[BatchT]:
        """This epoch's remaining batches as the workers made them, from the first sample not delivered."""

    @abc.abstractmethod
    def deliver(self, samples: int, waited: float = 0.0) -> None:
        """The training loop received ``samples`` more samples, after waiting ``waited`` seconds for them."""

    @abc.abstractmethod
    def finish_epoch(self) -> None:
        """Move to the next epoch (after the last batch, or when the loop leaves an epoch early)."""

    @abc.abstractmethod
    def to_device(self, batch: BatchT, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and int64 targets of ``batch`` on ``device``, queued on the current stream."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Where the training loop is: save it with the model checkpoint."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where ``state`` left off (on any world size); ValueError in one line for a bad state."""


def copy_batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, targets) of a batch copied to ``device``, queued on the current stream (from pinned memory
    under CUDA: the loader pins what it hands out)."""
    return batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)


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


def worker_error(exc: ImagenetPackError) -> ImagenetPackError:
    """The package's error a DataLoader worker raised, as its one line: DataLoader re-raises it in the main
    process as the same type whose text is the worker's whole traceback, ending with that line."""
    text = str(exc)
    if "\nOriginal Traceback" not in text:
        return exc
    last = text.rstrip().splitlines()[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    return type(exc)(last[len(prefix):] if last.startswith(prefix) else last)


def worker_init(worker_id: int) -> None:
    """Seed numpy per worker; one OpenCV thread per worker process (the workers are the parallelism).

    ``cv2.setNumThreads`` deadlocks in a child forked while the parent's OpenCV pool runs, so
    :func:`epoch_loader` sets 1 in the parent before any worker forks; a spawned worker sets it here.
    """
    np.random.seed(torch.initial_seed() % 2**32)
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


class EpochLoader(Feed[tuple[torch.Tensor, torch.Tensor]]):
    """Iterate once per epoch; see the module docstring. ``dataloader`` is the underlying DataLoader."""

    def __init__(self, dataloader: DataLoader, sampler: EpochSampler, batch_size: int, drop_last: bool,
                 ring: BatchRing | None = None, pin: bool = False):
        self.dataloader, self.sampler, self.batch_size, self.drop_last = dataloader, sampler, batch_size, drop_last
        self.ring, self.pin = ring, pin
        self._delivered = 0  # samples of this rank's share of the epoch the training loop received this run

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def delivered(self) -> int:
        return self._delivered

    def __len__(self) -> int:
        """Batches in a full epoch (also after resuming mid-epoch)."""
        n = self.sampler.per_rank()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.batches():
            self.deliver(len(batch[1]))
            yield batch
        self.finish_epoch()

    def results(self) -> Iterator[Any]:
        """This epoch's remaining batches as the DataLoader returns them (a ring's :class:`WorkerBatch`), from
        the first sample not delivered; a worker's error as its one line."""
        self.sampler.skip = self._delivered
        try:
            yield from self.dataloader
        except ImagenetPackError as exc:
            raise worker_error(exc) from None

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, int64 targets) of this epoch's remaining batches, in memory of the caller's own."""
        for result in self.results():
            yield self.ring.take(result, pin=self.pin) if self.ring is not None else result

    def deliver(self, samples: int, waited: float = 0.0) -> None:
        self._delivered += samples

    def to_device(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return copy_batch(batch, device)

    def finish_epoch(self) -> None:
        """Move to the next epoch (called at the end of one, or after leaving it early, e.g. a step limit)."""
        self._delivered = 0
        self.sampler.set_epoch(self.sampler.epoch + 1)

    def state_dict(self) -> dict:
        """Epoch and samples the training loop received so far in it (save it with the model checkpoint)."""
        return self.sampler.state_dict(self._delivered)

    def load_state_dict(self, state: dict) -> None:
        self._delivered = 0
        self.sampler.load_state_dict(state)


UINT8_ONLY = ("build_loader takes datasets whose samples are uint8 CxHxW tensors (normalisation runs on the device): "
              "use a fused decoder (RandomResizedCropDecoder, CenterCropDecoder) or decoder='tensor' with uint8 "
              "transforms, not ToTensor/Normalize or PIL images")


def check_uint8_samples(dataset: Any, shape: tuple[int, int, int] | None) -> None:
    """ValueError in one line unless ``dataset``'s samples are (uint8 CxHxW tensor, target): a fused decoder
    says so by its batch ``shape``; any other dataset by its first sample, asked for as the loader's sampler
    asks (an (index, epoch) pair)."""
    if shape is not None or len(dataset) == 0:
        return
    sample = dataset[(0, 0)]
    image = sample[0] if isinstance(sample, (tuple, list)) and len(sample) == 2 else None
    if not (isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.dim() == 3):
        kind = f"{image.dtype} tensors" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{UINT8_ONLY}; this dataset gives {kind}")


def epoch_loader(dataset: Any, batch_size: int, options: LoaderOptions = LoaderOptions(), *, staged: bool = False,
                 pin: bool = False) -> EpochLoader:
    """A uint8-batch loader over ``dataset`` (use a fused decoder or ``decoder="tensor"``), loading as
    ``options`` say.

    ``pin``: batches in pinned memory (for a CUDA device). With workers and a dataset with a ``batch_shape``
    the batches go through a :class:`BatchRing` of ``prefetch_factor * workers + 1`` batch buffers in shared
    memory. ``staged`` (a hybrid feed's): the workers stage every row in the ring and decode the first ones the
    ring's share leaves them; the rest are the device's.
    """
    shape = in_place_shape(dataset)  # None: any other dataset, collated
    check_uint8_samples(dataset, shape)
    workers, train = options.worker_count(hybrid=staged), options.train
    cv2.setNumThreads(1)  # in the parent, before any worker forks (see worker_init)
    sampler = EpochSampler(len(dataset), shuffle=train, seed=options.seed, rank=options.rank,
                           world_size=options.world_size, pad=train)
    common: dict[str, Any] = dict(num_workers=workers, worker_init_fn=worker_init if workers else None,
                                  persistent_workers=options.persistent_workers and workers > 0,
                                  prefetch_factor=options.prefetch_factor if workers else None)
    if staged and (not workers or shape is None):
        raise ValueError("a hybrid feed needs loader workers and an LmdbImageNet with a fused decoder")
    if workers and shape is not None:
        ring = BatchRing(dataset, options.prefetch_factor * workers + 1, batch_size, shape, staged=staged)
        batches = NumberedBatches(sampler, batch_size, drop_last=train)
        return EpochLoader(DataLoader(ring, batch_sampler=batches, collate_fn=as_is, **common), sampler, batch_size,
                           drop_last=train, ring=ring, pin=pin)
    dataloader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_uint8,
                            pin_memory=pin, drop_last=train, **common)
    return EpochLoader(dataloader, sampler, batch_size, drop_last=train)
