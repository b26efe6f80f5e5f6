"""``build_loader``: the one way to make a training or evaluation feed over a dataset: the CPU loader
(:mod:`imagenet_pack.loader`), with the device decoding a share of every batch when asked (the hybrid feed,
:mod:`imagenet_pack.gpu.hybrid`)."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from .gpu.device import pins
from .gpu.hybrid import HybridLoader
from .loader.loader import Feed, epoch_loader
from .read.dataset import LmdbImageNet


def build_loader(dataset: Dataset, batch_size: int, *, train: bool = True, workers: int | None = None,
                 seed: int = 0, prefetch_factor: int = 4, persistent_workers: bool = True,
                 rank: int | None = None, world_size: int | None = None, gpu_share: float | str = 0.0,
                 device: torch.device | str = "cuda") -> Feed:
    """A uint8-batch loader over ``dataset`` (use a fused decoder or ``decoder="tensor"``).

    ``train`` shuffles every epoch, pads ranks to equal length and drops the last partial batch (so every
    step has ``batch_size`` samples); eval keeps the order and every sample, each on exactly one rank. See
    :func:`imagenet_pack.loader.loader.epoch_loader`. Batches are pinned when ``device`` is a CUDA device
    this process can use (their copies to it are then asynchronous).

    ``gpu_share`` (a hybrid feed, fused decoders only): that share of every batch (its last samples) is
    decoded on ``device`` while the CPU workers decode the rest; batches then arrive on the device as uint8,
    in the sampler's order, with the same crops and the same exact resume. ``"auto"`` chooses the share from
    what each side can carry and revisits it (:class:`~imagenet_pack.gpu.share.SharePolicy`);
    ``loader.gpu_share`` tells the share decided last. ``workers`` defaults to every core, less two for a hybrid
    feed (the training loop's and the device stage's).
    """
    options: dict[str, Any] = dict(train=train, workers=workers, seed=seed, prefetch_factor=prefetch_factor,
                                   persistent_workers=persistent_workers, rank=rank, world_size=world_size)
    if not gpu_share:
        return epoch_loader(dataset, batch_size, pin=pins(torch.device(device)), **options)
    if not isinstance(dataset, LmdbImageNet) or dataset.batch_shape is None:
        raise ValueError("gpu_share needs an LmdbImageNet with a fused decoder (RandomResizedCropDecoder or "
                         "CenterCropDecoder) and no transform")
    return HybridLoader(dataset, batch_size, share=gpu_share, device=device, **options)
