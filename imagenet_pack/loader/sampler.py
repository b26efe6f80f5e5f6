"""A deterministic, resumable, elastic, distributed sampler.

The order of an epoch depends only on (seed, epoch): a seeded permutation (or the natural order for
evaluation), held as one numpy array (int32 below 2**31 samples; its size at 14 M: docs/PERFORMANCE.md). A run
deals what is left of the epoch to its ranks round robin, padding only the end (training, like
``DistributedSampler``) or not at all (evaluation: every sample exactly once across ranks). Its state is the
number of samples of the epoch the whole job has consumed, so a job resumed on another number of processes
deals the rest to its new ranks and every sample of the epoch is still seen exactly once (plus end-of-epoch
padding). What cannot be preserved across a change of world size is which samples share a batch on a rank:
batches are cut from each rank's share, which the new world size deals differently.

It yields ``(index, epoch)`` pairs, so the fused decoders draw crops reproducibly per (seed, epoch, index)
whatever the worker count, world size or timing.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from ..contract.format import checked_int


class EpochSampler(Sampler):
    """Indices of one rank for one epoch, from what the job had consumed when this run started.

    Args:
        length: dataset size.
        shuffle: a new permutation every epoch (train) or the natural order (eval).
        seed: the permutation of epoch ``e`` comes from ``(seed, e)``.
        rank, world_size: this process's share; defaults to ``torch.distributed`` when initialised.
        pad: repeat samples from the head of the epoch so every rank gets the same count (train); False
            gives every sample to exactly one rank (eval), ranks then differ by at most one sample.

    Attributes:
        epoch: the current epoch.
        start: samples of this epoch the whole job consumed before this run (0 unless resumed mid-epoch).
        skip: samples of this rank's share the next iteration passes over (those its loader already delivered).
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
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.length, self.shuffle, self.seed, self.pad = length, shuffle, seed, pad
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start, self.skip = 0, 0, 0

    def order(self, epoch: int) -> np.ndarray:
        """The whole job's order of ``epoch``: every index once."""
        order = np.arange(self.length, dtype=np.int32 if self.length < 2**31 else np.int64)
        if self.shuffle:
            np.random.default_rng([self.seed, epoch]).shuffle(order)
        return order

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's indices for ``epoch`` in this run, in order (a view: no Python list of the epoch)."""
        order = self.order(epoch)
        rest = order[self.start:] if epoch == self.epoch else order
        if self.pad and len(rest) % self.world_size:
            rest = np.concatenate([rest, np.resize(order, self.world_size - len(rest) % self.world_size)])
        return rest[self.rank::self.world_size]

    def per_rank(self, start: int = 0) -> int:
        """Samples of this rank's part of an epoch of which the job consumed ``start`` before this run."""
        left = max(0, self.length - start)
        if self.pad:
            return -(-left // self.world_size)
        return len(range(self.rank, left, self.world_size))

    def __len__(self) -> int:
        """Samples this rank has left to iterate in the current epoch."""
        return max(0, self.per_rank(self.start) - self.skip)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in self.indices(epoch)[self.skip:]:
            yield int(index), epoch

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning."""
        self.epoch, self.start, self.skip = epoch, 0, 0

    def consumed(self, delivered: int) -> int:
        """Samples of the epoch the whole job has consumed when every rank has delivered ``delivered`` samples
        of its share in this run (the loaders of a job step together)."""
        return min(self.length, self.start + delivered * self.world_size)

    def state_dict(self, delivered: int) -> dict:
        """The epoch and what the job consumed of it."""
        return {"epoch": self.epoch, "consumed": self.consumed(delivered), "seed": self.seed, "length": self.length,
                "shuffle": self.shuffle, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume where ``state`` left off, on any world size: the rest of the epoch is dealt to this run's
        ranks. ValueError (one line, naming the field) for a state that is not one this sampler wrote, or
        that is for another order (seed, length, shuffling)."""
        if not isinstance(state, dict):
            raise TypeError(f"sampler state must be a dict, not {type(state).__name__}")
        missing = [k for k in ("epoch", "consumed", "seed") if k not in state]
        if missing:
            raise ValueError(f"sampler state lacks {', '.join(missing)}: not a state_dict() of this loader")
        epoch = checked_int(state["epoch"], "sampler state's epoch", 0)
        consumed = checked_int(state["consumed"], "sampler state's consumed", 0, self.length)
        seed = checked_int(state["seed"], "sampler state's seed", 0)
        length = checked_int(state.get("length", self.length), "sampler state's length", 0)
        shuffle = state.get("shuffle", self.shuffle)
        if not isinstance(shuffle, bool):
            raise ValueError(f"sampler state's shuffle is {shuffle!r}, not True or False")
        if "world_size" in state:
            checked_int(state["world_size"], "sampler state's world_size", 1)
        if (seed, length, shuffle) != (self.seed, self.length, self.shuffle):
            raise ValueError(f"sampler state is for seed {seed}, {length} samples, shuffle={shuffle}; this run has "
                             f"seed {self.seed}, {self.length} samples, shuffle={self.shuffle}: the order would differ")
        self.epoch, self.start, self.skip = epoch, consumed, 0
