"""Normalised batches on the device, made ahead of compute: :class:`CudaPrefetcher`."""
from __future__ import annotations

import functools
from collections.abc import Generator, Iterable, Iterator, Sized

import torch

from .device import resolve_device
from .lookahead import feed_ahead
from .normalize import IMAGENET_MEAN, IMAGENET_STD, normalize


class CudaPrefetcher:
    """Wrap a loader of (uint8 images, targets); yields normalised images and targets on ``device``.

    ``depth`` batches are made ahead of the training loop, on a stream and in a thread of their own
    (:mod:`.lookahead`): the copy to the device, the device's share of a hybrid feed (decoded there), the
    normalisation. With an :class:`~imagenet_pack.loader.loader.EpochLoader` or a hybrid feed, only the
    batches the loop received count as consumed: ``state_dict()`` resumes with exactly the rest, and leaving
    the loop early (a ``break``, a step limit) loses nothing: the next pass continues with the first sample
    not received. On a CPU device the same code runs, with plain copies.
    """

    def __init__(self, loader: Iterable, device: torch.device | str = "cuda", *, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, mean=IMAGENET_MEAN, std=IMAGENET_STD, depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.loader, self.device, self.depth = loader, resolve_device(device), depth
        self.finish = functools.partial(normalize, mean=mean, std=std, dtype=dtype, channels_last=channels_last)

    def __len__(self) -> int:
        if not isinstance(self.loader, Sized):
            raise TypeError(f"{type(self.loader).__name__} has no length")
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]:
        """This epoch's batches, as a generator whose ``close()`` stops the look-ahead at once (what it held
        ahead is delivered again by the next pass)."""
        return feed_ahead(self.loader, self.device, self.finish, self.depth)
