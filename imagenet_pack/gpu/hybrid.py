"""The hybrid feed: every batch decoded partly by the CPU workers and partly on the device, in the sampler's
order. The one home of the merge (:meth:`HybridLoader.to_device`); the share is :mod:`.share`'s.

The workers stage every row of each batch in shared memory (each record read and checked, its plan drawn
with the CPU decoders' law and seeds) and decode rows from the first on while the share, read before each
row, leaves them more: the rest are the device's, so a new share applies at once and the main process never
reads the database. A thread of the main process receives each batch, copies it out into a pinned buffer
(:mod:`.pinned`) and prepares its device rows' code streams; a second, on the look-ahead's stream
(:mod:`.lookahead`), submits the batch before it: copies the workers' rows in, decodes and resamples the staged
rows into theirs (:class:`~.decode.GpuBatchDecoder`) and copies the targets. Samples, crops, order and exact
resume are those of the CPU-only loader.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from ..loader.loader import Feed, epoch_loader
from ..loader.options import LoaderOptions
from ..read.dataset import LmdbImageNet
from ..read.staged import StagedRecords
from .decode import GpuBatchDecoder
from .device import StageClock, host_timed, pins, resolve_device, synchronize, timed
from .lookahead import feed_ahead
from .pinned import HostBatch, PinnedBuffers
from .share import SharePolicy


class HybridLoader(Feed[HostBatch]):
    """An :class:`~imagenet_pack.loader.loader.EpochLoader` whose batches are decoded partly on ``device``
    (see the module docstring). Iterating it yields uint8 batches on the device; wrap it in
    :class:`~imagenet_pack.gpu.prefetch.CudaPrefetcher` to have them normalised in the same look-ahead."""

    START_ROWS = 16  # records decoded on each side at start-up to measure what a row costs
    # GPU decode mode's share of each batch first given to the hardware engine, the rest to the hybrid decoder
    # (nvImageCodec then balances them): DALI's default hw_decoder_load; a hybrid feed's CPU cores are the
    # workers', so there the engine takes everything it can
    HW_LOAD_GPU_MODE = 0.65
    host_ahead = 1  # batches received, pinned and prepared in a thread of their own, ahead of their submission

    def __init__(self, dataset: LmdbImageNet, batch_size: int, options: LoaderOptions, *, share: float | str,
                 device: torch.device | str):
        if dataset.batch_shape is None:  # build_loader says so in words; here, a programming error
            raise TypeError("HybridLoader needs a fused decoder's batch shape")
        self.shape = dataset.batch_shape
        self.dataset, self.device = dataset, resolve_device(device)
        self.policy = SharePolicy(share, self.device, options.worker_count(hybrid=True))
        self.epoch_loader = epoch_loader(dataset, batch_size, options, staged=True, pin=pins(self.device))
        if self.epoch_loader.ring is None:
            raise TypeError("HybridLoader needs loader workers (the ring their batches are staged in)")
        self.ring = self.epoch_loader.ring
        self.ring.set_share(self.policy.share)
        # GPU decode mode: the engine and the hybrid decoder share each batch; a hybrid feed: the engine alone
        hw_load = self.HW_LOAD_GPU_MODE if share == 1.0 else 1.0
        self.decoder = GpuBatchDecoder(self.shape[1], self.device, batch_size=batch_size, hw_load=hw_load)
        self.pinned = PinnedBuffers(4, batch_size, self.shape, self.device)
        self.sampler = self.epoch_loader.sampler
        self._cost = StageClock(self.device)  # the device rows' cost, for the share
        self._rows: list[int] = []  # rows of each timed batch not yet read
        self.stages: StageClock | None = None  # see time_stages

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
        """This epoch's remaining batches, each staged on the host as one :class:`~.pinned.HostBatch`."""
        if not self.policy.started:
            self.policy.start(*self._row_costs())
            self.ring.set_share(self.policy.share)
        self.pinned.reset()
        for result in self.epoch_loader.results():
            self.policy.observe_workers(result.cpu_rows, result.seconds)
            with host_timed(self.stages, "pinned"):
                batch = self.pinned.take(self.ring, result)
            if batch.staged is not None:
                with host_timed(self.stages, "prepare"):
                    batch = batch._replace(prepared=self.decoder.prepare(batch.staged))
            yield batch

    def deliver(self, samples: int, waited: float = 0.0) -> None:
        self.epoch_loader.deliver(samples)
        at = (self.epoch, self.sampler.consumed(self.delivered))
        self.policy.observe_delivery(samples, waited, at)
        self.ring.set_share(self.policy.share)

    def finish_epoch(self) -> None:
        self.epoch_loader.finish_epoch()

    def to_device(self, batch: HostBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The workers' rows copied and the staged rows decoded into one uint8 batch on this loader's device,
        queued on the current stream (``device`` is the look-ahead's, the same one)."""
        size = len(batch.targets)
        side = self.shape[1]
        out = torch.empty((size, side, side, 3), dtype=torch.uint8, device=self.device).permute(0, 3, 1, 2)
        with timed(self.stages, "merge"):
            out[:len(batch.images)].copy_(batch.images, non_blocking=True)
        if batch.staged is not None:
            # what the device's rows cost, told to the share once the device has passed them (never waited for)
            with self._cost("device"):
                self.decoder(batch.staged, out, batch.cpu_rows, batch.prepared)
            self._rows.append(batch.staged.rows)
            for _, seconds in self._cost.done():
                self.policy.observe_device(self._rows.pop(0), seconds)
        with timed(self.stages, "merge"):
            targets = batch.targets.to(self.device, non_blocking=True, copy=True)
        self.pinned.release(batch)
        return out, targets

    def time_stages(self, clock: StageClock | None) -> None:
        """Time each stage of the device path on ``clock`` from now on (on the host: the pinned copy and the
        decoder's prepare; on the device: merge, and the decoder's decode, table and resample); None stops."""
        self.stages = self.decoder.stages = clock


    def state_dict(self) -> dict:
        return {**self.epoch_loader.state_dict(), **self.policy.state()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch_loader.load_state_dict(state)
        self.policy.restore(state)
        self.ring.set_share(self.policy.share)

    def _row_costs(self) -> tuple[float, float]:
        """Seconds a row costs one worker and the device stage, measured on the first records (the device's
        after a first call that compiles and warms what it uses)."""
        count = min(self.START_ROWS, len(self.dataset))
        indices = list(range(count))
        staged = StagedRecords.allocate(count)
        side = self.shape[1]
        images = torch.empty((count, side, side, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
        started = time.perf_counter()  # as a worker does: read, check and stage each record, then decode it
        self.dataset.stage_and_decode(indices, staged, images, lambda: count)
        cpu = (time.perf_counter() - started) / max(count, 1)
        self.decoder(staged)  # the same records, as staged
        synchronize(self.device)
        started = time.perf_counter()
        self.decoder(staged)
        synchronize(self.device)
        return cpu, (time.perf_counter() - started) / max(count, 1)
