"""How a feed loads (:class:`LoaderOptions`): its defaults, and how many workers it runs when not told."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from ..machine import default_workers


@dataclass(frozen=True)
class LoaderOptions:
    """``train`` shuffles every epoch, pads ranks to equal length and drops the last partial batch; eval keeps
    the order and gives every sample to exactly one rank. ``workers`` None: this process's share of the cores
    (:meth:`worker_count`). ``seed`` seeds the order and the crops; ``prefetch_factor`` batches per worker
    are made ahead; ``rank`` and ``world_size`` default to ``torch.distributed``'s when it is initialised."""

    train: bool = True
    workers: int | None = None
    seed: int = 0
    prefetch_factor: int = 4
    persistent_workers: bool = True
    rank: int | None = None
    world_size: int | None = None

    HOST_CORES: ClassVar[int] = 2  # cores a hybrid feed leaves to the training loop and the device stage

    def worker_count(self, hybrid: bool = False) -> int:
        """``workers`` when given; else the cores this process may use shared among the processes of its host
        (``LOCAL_WORLD_SIZE``, as torchrun sets it), less :attr:`HOST_CORES` for a hybrid feed (at least 1)."""
        if self.workers is not None:
            return self.workers
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
        share = max(1, default_workers() // local)
        return max(1, share - self.HOST_CORES) if hybrid else share
