"""A deterministic, resumable, distributed sampler.

The order of an epoch depends only on (seed, epoch, world size): a seeded permutation, padded by repeating
its head (training, like ``DistributedSampler``) or left uneven (evaluation: every sample exactly once
across ranks), then dealt to ranks round robin. It yields ``(index, epoch)`` pairs, so the fused decoders
draw crops reproducibly per (seed, epoch, index) whatever the worker count or timing.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    """Indices of one rank for one epoch, starting at ``position`` (samples already consumed this epoch).

    Args:
        length: dataset size.
        shuffle: a new permutation every epoch (train) or the natural order (eval).
        seed: the permutation of epoch ``e`` comes from ``seed + e``.
        rank, world_size: this process's share; defaults to ``torch.distributed`` when initialised.
        pad: repeat samples so every rank gets the same count (train); False gives every sample to exactly
            one rank (eval), ranks then differ by at most one sample.
    """

    def __init__(self, length: int, *, shuffle: bool = True, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, pad: bool = True):
        if rank is None or world_size is None:
            dist = torch.distributed
            initialised = dist.is_available() and dist.is_initialized()
            rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
            world_size = world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.length, self.shuffle, self.seed, self.pad = length, shuffle, seed, pad
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0

    def indices(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch``, in order."""
        if self.shuffle:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            order = list(range(self.length))
        if self.pad and self.length % self.world_size:
            extra = self.world_size - self.length % self.world_size
            order += (order * (extra // max(1, len(order)) + 1))[:extra]
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        if self.pad:
            return -(-self.length // self.world_size)
        return len(range(self.rank, self.length, self.world_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in self.indices(epoch)[self.position:]:
            yield index, epoch

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        self.epoch, self.position = epoch, position

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state["world_size"] != self.world_size or state["seed"] != self.seed:
            raise ValueError(f"sampler state is for seed {state['seed']} and world size {state['world_size']}, "
                             f"this run has seed {self.seed} and world size {self.world_size}: the order would differ")
        self.set_epoch(state["epoch"], state["position"])
