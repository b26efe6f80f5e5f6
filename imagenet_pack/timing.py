"""Timing loaders the way users run them: the demo's and the benchmarks' one way to measure images/s.

Set-up (worker start, first epoch) is never timed; a figure is the median of several epochs.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Iterable

from torch.utils.data import DataLoader, Dataset

from .loader.loader import build_loader


def standard_train_transform():
    """torchvision's reference ImageNet training transform: what the baselines and the drop-in run."""
    from torchvision import transforms
    return transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])


def standard_val_transform():
    """torchvision's reference ImageNet evaluation transform: Resize(256), CenterCrop(224)."""
    from torchvision import transforms
    return transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
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


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (clean pages only: the next read goes to the disk)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def worker_memory(loader: DataLoader) -> tuple[float, float]:
    """Mean private and shared resident MB of the loader's (persistent) worker processes (Linux)."""
    private, shared = [], []
    for worker in getattr(getattr(loader, "_iterator", None), "_workers", []):
        fields = {}
        try:
            lines = Path(f"/proc/{worker.pid}/smaps_rollup").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            key, value = line.split(":")
            fields[key] = int(value.split()[0]) / 1024
        private.append(fields["Private_Clean"] + fields["Private_Dirty"])
        shared.append(fields["Shared_Clean"] + fields["Shared_Dirty"])
    return (statistics.mean(private), statistics.mean(shared)) if private else (float("nan"), float("nan"))


def measure(entries: dict[str, tuple[Dataset, list[Path] | None]], workers: int, epochs: int,
            batch_size: int = 32) -> list[dict]:
    """Median images/s of every entry over ``epochs`` rounds after one untimed warm-up round, and the
    memory of its workers. Each round runs one epoch of every entry in turn, so a slow spell of a shared
    machine slows all entries alike instead of one of them; ``cold`` files are evicted before each epoch."""
    loaders = {name: timing_loader(dataset, workers=workers, batch_size=batch_size)
               for name, (dataset, _) in entries.items()}
    rates: dict[str, list[float]] = {name: [] for name in entries}
    for round_ in range(epochs + 1):
        for name, (batches, _) in loaders.items():
            cold = entries[name][1]
            if cold and round_:
                evict(cold)
            rate = epoch_rate(batches)
            if round_:
                rates[name].append(rate)
        print(f"  round {round_}/{epochs} done{' (warm-up)' if not round_ else ''}", file=sys.stderr)
    results = []
    for name, (_, loader) in loaders.items():
        private, shared = worker_memory(loader)
        results.append({"name": name, "images_per_s": statistics.median(rates[name]),
                        "epochs_images_per_s": [round(r, 1) for r in rates[name]],
                        "worker_private_mb": private, "worker_shared_mb": shared})
    return results
