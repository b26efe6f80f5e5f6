"""The hybrid feed: every batch decoded partly by the CPU workers and partly on the device, in the sampler's
order. The one home of the batch split (:class:`SharePolicy`), the merge (:meth:`HybridLoader.to_device`) and
the share.

The workers decode the first rows of each batch into shared memory; the last ``share`` of them are left to
the device: their bytes are read from LMDB in the process that decodes them (a memory-mapped read costs
microseconds; nothing is pickled through worker pipes), decoded by :class:`~.decode.GpuBatchDecoder` with the
same plans (same law and seeds), and merged with the CPU rows into one batch, all on the look-ahead's own
stream (:mod:`.stage`). Samples, crops, order and exact resume are those of the CPU-only loader.
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterator, Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset

from ..format import Record, checked_int
from ..loader.loader import epoch_loader
from ..read.crops import Plan
from .decode import GpuBatchDecoder
from .stage import feed_ahead, resolve_device


@runtime_checkable
class EncodedSource(Protocol):
    """A dataset that hands out stored records with the plans its fused decoder would draw
    (``LmdbImageNet`` with a fused decoder)."""

    @property
    def batch_shape(self) -> tuple[int, int, int] | None: ...

    def encoded_batch(self, items: list) -> tuple[list[Record], list[Plan], list[str]]: ...


class SharePolicy:
    """How many rows of each batch the workers decode: all but ``share`` of them, for batches from ``since``
    (epoch, samples of it the job had consumed) on, and all of them before.

    ``"auto"`` measures the run itself: its first batches go to the workers alone while the training loop's
    deliveries are timed; the share is then the fraction of time the loop waited for data (the part of its
    appetite the workers cannot feed), plus a margin: the smallest share that keeps it from waiting. It takes
    effect from the first batch not yet handed to the workers and is fixed for the run, and saved in
    ``state_dict()``, so a resumed run splits every batch as the uninterrupted one did. On a CPU device the
    "device" is the workers' own cores, so the share is 0.
    """

    WARMUP, WINDOW, MARGIN = 3, 8, 0.05

    def __init__(self, share: float | str, device: torch.device):
        self.auto = share == "auto" and device.type == "cuda"
        if share != "auto" and not (isinstance(share, (int, float)) and 0.0 <= share <= 1.0):
            raise ValueError(f"gpu_share must be in [0, 1] or 'auto', got {share!r}")
        self.share: float | None = None if self.auto else (0.0 if share == "auto" else float(share))
        self.since: tuple[int, int] = (0, 0)
        self._dispatched = (0, 0)  # where the next batch handed to the workers starts
        self._deliveries: list[tuple[float, int, float]] = []  # time, samples, seconds waited

    def cpu_rows(self, epoch: int, at: int, size: int) -> int:
        """Rows of the batch of ``size`` starting at (``epoch``, ``at``) that the workers decode."""
        self._dispatched = (epoch, at + size)
        share = self.share if self.share is not None and (epoch, at) >= self.since else 0.0
        return size - int(round(size * share))

    def observe(self, samples: int, waited: float) -> None:
        """The training loop received ``samples`` after waiting ``waited`` seconds (auto: until decided)."""
        if self.share is not None:
            return
        self._deliveries.append((time.perf_counter(), samples, waited))
        if len(self._deliveries) < self.WARMUP + self.WINDOW + 1:
            return
        window = self._deliveries[-self.WINDOW:]
        span = window[-1][0] - self._deliveries[-self.WINDOW - 1][0]
        waited = sum(w for _, _, w in window)
        share = 0.0 if waited < 0.03 * span else min(1.0, waited / span + self.MARGIN)
        self.share, self.since = math.ceil(share * 64 - 1e-9) / 64, self._dispatched

    def state(self) -> dict:
        return {} if self.share is None else {"gpu_share": self.share, "gpu_share_since": list(self.since)}

    def restore(self, state: dict) -> None:
        if "gpu_share" in state:
            share, since = state["gpu_share"], state.get("gpu_share_since")
            if type(share) not in (int, float) or not 0.0 <= share <= 1.0:
                raise ValueError(f"loader state's gpu_share is {share!r}, not a share from 0 to 1")
            if not isinstance(since, (list, tuple)) or len(since) != 2:
                raise ValueError(f"loader state's gpu_share_since is {since!r}, not [epoch, consumed]")
            since = (checked_int(since[0], "gpu_share_since epoch"), checked_int(since[1], "gpu_share_since consumed"))
            self.share, self.since, self.auto = float(share), since, False


class HybridLoader:
    """An :class:`~imagenet_pack.loader.loader.EpochLoader` whose batches are decoded partly on ``device``
    (see the module docstring). Iterating it yields uint8 batches on the device; wrap it in
    :class:`~imagenet_pack.gpu.prefetch.CudaPrefetcher` to have them normalised in the same look-ahead."""

    def __init__(self, dataset: Dataset, batch_size: int, *, share: float | str, device: torch.device | str,
                 **loader_options: Any):
        if not isinstance(dataset, EncodedSource) or dataset.batch_shape is None:
            raise ValueError("gpu_share needs an LmdbImageNet with a fused decoder (RandomResizedCropDecoder or "
                             "CenterCropDecoder) and no transform")
        self.dataset, self.device = dataset, resolve_device(device)
        self.policy = SharePolicy(share, self.device)
        self.loader = epoch_loader(dataset, batch_size, split=self.policy.cpu_rows, **loader_options)
        self.decoder = GpuBatchDecoder(dataset.batch_shape[1], self.device)
        self.sampler = self.loader.sampler

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    @property
    def delivered(self) -> int:
        return self.loader.delivered

    @property
    def gpu_share(self) -> float:
        """The share of each batch decoded on the device (0 while "auto" is still measuring)."""
        return self.policy.share or 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return feed_ahead(self, self.device)

    def batches(self) -> Iterator[Any]:
        return self.loader.batches()

    def deliver(self, samples: int, waited: float = 0.0) -> None:
        self.loader.deliver(samples)
        self.policy.observe(samples, waited)

    def epoch_done(self) -> None:
        self.loader.epoch_done()

    def finish_epoch(self) -> None:
        self.loader.finish_epoch()

    def to_device(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The workers' rows copied and the device's rows decoded into one uint8 batch on ``device``."""
        images, targets = batch[0], batch[1]
        rest = batch[2] if len(batch) == 3 else []
        size, cpu = self.dataset.batch_shape[1], len(targets)
        out = torch.empty((cpu + len(rest), size, size, 3), dtype=torch.uint8, device=device).permute(0, 3, 1, 2)
        out[:cpu].copy_(images, non_blocking=True)
        if rest:
            records, plans, wheres = self.dataset.encoded_batch(rest)
            self.decoder(records, plans, wheres, out=out[cpu:])
            targets = torch.cat([targets, torch.tensor([r.target for r in records], dtype=torch.int64)])
            if device.type == "cuda":
                targets = targets.pin_memory()
        return out, targets.to(device, non_blocking=True)

    def state_dict(self) -> dict:
        return {**self.loader.state_dict(), **self.policy.state()}

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self.policy.restore(state)
