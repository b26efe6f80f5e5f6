"""The hybrid feed: every batch decoded partly by the CPU workers and partly on the device, in the sampler's
order. The one home of the merge (:meth:`HybridLoader.to_device`); the share is :mod:`.share`'s.

The workers decode the first rows of each batch into shared memory and stage the rest for the device: they
read and check those records and draw their plans (same law and seeds as the CPU decoders) into the same
slot, so the main process never reads the database. It copies the batch out into a pinned staging buffer
(:mod:`.staging`) and hands that one block to the device stage, which, on the look-ahead's stream
(:mod:`.stage`), copies the workers' rows in, decodes and resamples the staged rows into theirs
(:class:`~.decode.GpuBatchDecoder`) and copies the targets. Samples, crops, order and exact resume are those
of the CPU-only loader.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import torch

from ..loader.loader import Feed, epoch_loader
from ..machine import default_workers
from ..read.dataset import LmdbImageNet
from .decode import GpuBatchDecoder
from .device import is_cuda, pins, resolve_device
from .share import SharePolicy
from .stage import feed_ahead
from .staging import HostBatch, Staging


class HybridLoader(Feed):
    """An :class:`~imagenet_pack.loader.loader.EpochLoader` whose batches are decoded partly on ``device``
    (see the module docstring). Iterating it yields uint8 batches on the device; wrap it in
    :class:`~imagenet_pack.gpu.prefetch.CudaPrefetcher` to have them normalised in the same look-ahead."""

    def __init__(self, dataset: LmdbImageNet, batch_size: int, *, share: float | str, device: torch.device | str,
                 **loader_options: Any):
        if not isinstance(dataset, LmdbImageNet) or dataset.batch_shape is None:
            raise ValueError("gpu_share needs an LmdbImageNet with a fused decoder (RandomResizedCropDecoder or "
                             "CenterCropDecoder) and no transform")
        self.dataset, self.device = dataset, resolve_device(device)
        workers = loader_options.get("workers")
        self.policy = SharePolicy(share, self.device, default_workers() if workers is None else workers)
        self.epoch_loader = epoch_loader(dataset, batch_size, cpu_rows=self.policy.cpu_rows, pin=pins(self.device),
                                   **loader_options)
        self.decoder = GpuBatchDecoder(dataset.batch_shape[1], self.device, batch_size=batch_size)
        self.staging = Staging(4, batch_size, dataset.batch_shape, self.device)
        self.sampler = self.epoch_loader.sampler
        self._timing: list[tuple[int, Any, Any]] = []  # (rows, start, end) events of device work not yet read

    @property
    def epoch(self) -> int:
        return self.epoch_loader.epoch

    @property
    def delivered(self) -> int:
        return self.epoch_loader.delivered

    @property
    def gpu_share(self) -> float:
        """The share of each batch decoded on the device, as last decided."""
        return self.policy.share

    def __len__(self) -> int:
        return len(self.epoch_loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return feed_ahead(self, self.device)

    def batches(self) -> Iterator[HostBatch]:
        """This epoch's remaining batches, each staged on the host as one :class:`~.staging.HostBatch`."""
        for result in self.epoch_loader.results():
            self.policy.observe_workers(result.cpu_rows, result.seconds)
            yield self.staging.take(self.epoch_loader.ring, result)

    def deliver(self, samples: int, waited: float = 0.0) -> None:
        self.epoch_loader.deliver(samples)
        self.policy.observe_delivery(samples, waited)

    def finish_epoch(self) -> None:
        self.epoch_loader.finish_epoch()

    def to_device(self, batch: HostBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The workers' rows copied and the staged rows decoded into one uint8 batch on this loader's device,
        queued on the current stream (``device`` is the look-ahead's, the same one)."""
        size = len(batch.targets)
        side = self.dataset.batch_shape[1]
        out = torch.empty((size, side, side, 3), dtype=torch.uint8, device=self.device).permute(0, 3, 1, 2)
        out[:len(batch.images)].copy_(batch.images, non_blocking=True)
        if batch.staged is not None:
            self._timed(batch.staged.rows, lambda: self.decoder(batch.staged, out, batch.cpu_rows))
        targets = batch.targets.to(self.device, non_blocking=True, copy=True)
        self.staging.release(batch)
        return out, targets

    def _timed(self, rows: int, work) -> None:
        """Run ``work`` (device work for ``rows`` rows) and tell the share what it cost: host time on a CPU
        device; on CUDA the time between two events, read once the device has passed them (never waited for)."""
        if not is_cuda(self.device):
            started = time.perf_counter()
            work()
            self.policy.observe_device(rows, time.perf_counter() - started)
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        self._timing.append((rows, start, end))
        while self._timing and self._timing[0][2].query():
            done, start, end = self._timing.pop(0)
            self.policy.observe_device(done, start.elapsed_time(end) / 1000)

    def state_dict(self) -> dict:
        return {**self.epoch_loader.state_dict(), **self.policy.state()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch_loader.load_state_dict(state)
        self.policy.restore(state)
