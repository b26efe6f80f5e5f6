"""``build_loader``: the one way to make a training or evaluation feed over a dataset: the CPU loader
(:mod:`imagenet_pack.loader`), with the device decoding a share of every batch when asked (the hybrid feed,
:mod:`imagenet_pack.gpu.hybrid`)."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .gpu.device import pins
from .gpu.hybrid import HybridLoader
from .loader.loader import Feed, epoch_loader
from .loader.options import LoaderOptions
from .read.dataset import LmdbImageNet, in_place_shape

_DEFAULT = LoaderOptions()


def build_loader(dataset: Dataset, batch_size: int, *, train: bool = _DEFAULT.train,
                 workers: int | None = _DEFAULT.workers, seed: int = _DEFAULT.seed,
                 prefetch_factor: int = _DEFAULT.prefetch_factor,
                 persistent_workers: bool = _DEFAULT.persistent_workers,
                 rank: int | None = _DEFAULT.rank, world_size: int | None = _DEFAULT.world_size,
                 gpu_share: float | str = 0.0, device: torch.device | str = "cuda") -> Feed:
    """A uint8-batch loader over ``dataset`` (use a fused decoder or ``decoder="tensor"``).

    ``train`` shuffles every epoch, pads ranks to equal length and drops the last partial batch (so every
    step has ``batch_size`` samples); eval keeps the order and every sample, each on exactly one rank. The
    loading options are :class:`~imagenet_pack.loader.options.LoaderOptions`' (``workers`` None: this process's
    share of its host's cores, less two for a hybrid feed). Batches are pinned when ``device`` is a CUDA device
    this process can use (their copies to it are then asynchronous).

    ``gpu_share`` (a hybrid feed, fused decoders only): that share of every batch (its last samples) is
    decoded on ``device`` while the CPU workers decode the rest; batches then arrive on the device as uint8,
    in the sampler's order, with the same crops and the same exact resume. ``"auto"`` chooses the share from
    what each side can carry and revisits it (:class:`~imagenet_pack.gpu.share.SharePolicy`);
    ``loader.gpu_share`` tells the share decided last.
    """
    options = LoaderOptions(train=train, workers=workers, seed=seed, prefetch_factor=prefetch_factor,
                            persistent_workers=persistent_workers, rank=rank, world_size=world_size)
    if not gpu_share:
        return epoch_loader(dataset, batch_size, options, pin=pins(torch.device(device)))
    if in_place_shape(dataset) is None:
        raise ValueError("gpu_share needs an LmdbImageNet with a fused decoder (RandomResizedCropDecoder or "
                         "CenterCropDecoder) and no transform")
    assert isinstance(dataset, LmdbImageNet)  # what in_place_shape said
    return HybridLoader(dataset, batch_size, options, share=gpu_share, device=device)
