"""Timing loaders the way users run them: the demo's and the benchmarks' one way to measure images/s.

Set-up (worker start, first epoch) is never timed; a figure is the median of several epochs.
"""
from __future__ import annotations

import time
from typing import Iterable

from torch.utils.data import DataLoader, Dataset

from .loader.loader import build_loader


def standard_train_transform():
    from torchvision import transforms
    return transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])


def timing_loader(dataset: Dataset, *, workers: int, batch_size: int = 32) -> tuple[Iterable, DataLoader]:
    """The batches to time and the DataLoader under them: datasets that decode batches in place (fused
    decoders) through :func:`build_loader`, as users run them; the rest through a plain shuffling DataLoader,
    as torchvision's reference training script does."""
    if getattr(dataset, "batch_shape", None) is not None:
        epochs = build_loader(dataset, batch_size, workers=workers)
        return epochs, epochs.loader
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0,
                        shuffle=True)
    return loader, loader


def epoch_rate(batches: Iterable) -> float:
    """images/s of one pass over ``batches``."""
    start, n = time.perf_counter(), 0
    for images, _ in batches:
        n += len(images)
    return n / (time.perf_counter() - start)


def images_per_second(dataset: Dataset, *, workers: int, batch_size: int = 32, epochs: int = 2) -> float:
    """Median images/s over ``epochs`` passes after one warm-up pass (worker start-up is not timed)."""
    batches, _ = timing_loader(dataset, workers=workers, batch_size=batch_size)
    rates = [epoch_rate(batches) for _ in range(epochs + 1)][1:]
    return sorted(rates)[len(rates) // 2]
