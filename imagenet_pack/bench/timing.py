"""Timing loaders the way users run them: the one way the demo, ``imagenet-pack bench`` and the benchmark
scripts measure images/s.

Set-up (worker start, the first round) is never timed; a figure is the median of several rounds. Entries
run interleaved, one round of each in turn, so a slow spell of a shared machine slows all of them alike.
A round is a fixed number of images pulled from an entry's stream of epochs (its workers stay alive and keep
their place between rounds), or an epoch's worth with ``images=None``. While other entries run, an entry's
workers fill its prefetch queue: each round first takes those batches untimed, so no entry starts with a
head start its queue depth would give it. Ratios between entries are medians of per-round ratios.
"""
from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from ..errors import BenchError
from ..feeds import build_loader
from ..gpu.normalize import IMAGENET_MEAN, IMAGENET_STD
from ..loader.loader import EpochLoader
from ..read.dataset import in_place_shape


def standard_train_transform():
    """torchvision's reference ImageNet training transform: what the baselines and the drop-in run."""
    from torchvision import transforms
    return transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def standard_val_transform():
    """torchvision's reference ImageNet evaluation transform: Resize(256), CenterCrop(224)."""
    from torchvision import transforms
    return transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def timing_loader(dataset: Any, *, workers: int, batch_size: int = 32) -> tuple[Iterable, DataLoader]:
    """The batches to time and the DataLoader under them: datasets that decode batches in place (fused
    decoders) through :func:`build_loader`, as users run them; the rest through a plain shuffling DataLoader,
    as torchvision's reference training script does."""
    if in_place_shape(dataset) is not None:
        epochs = build_loader(dataset, batch_size, workers=workers)
        assert isinstance(epochs, EpochLoader)  # no gpu_share: the CPU loader
        return epochs, epochs.dataloader
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0,
                        shuffle=True)
    return loader, loader


def epochs_of(batches: Iterable) -> Iterator[Any]:
    """``batches`` epoch after epoch, without end (ImagenetPackError if an epoch holds no batch at all)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise BenchError("an epoch of this loader holds no batch (fewer samples than one batch, and the "
                                    "last partial batch is dropped): lower --batch-size")


def queue_depth(loader: DataLoader) -> int:
    """Batches a DataLoader keeps in flight: what its workers make ahead while nobody asks for them."""
    return (loader.prefetch_factor or 0) * loader.num_workers


def timed_images(stream: Iterator[Any], images: int, ahead: int = 0) -> float:
    """images/s of pulling at least ``images`` images from ``stream``, after taking ``ahead`` batches (made
    while the stream was not being timed) untimed."""
    for _ in range(ahead):
        next(stream)
    start, n = time.perf_counter(), 0
    for batch in stream:
        n += len(batch[0])
        if n >= images:
            break
    return n / (time.perf_counter() - start)


def images_per_second(dataset: Any, *, workers: int, batch_size: int = 32, rounds: int = 2,
                      images: int | None = None) -> float:
    """Median images/s over ``rounds`` rounds of ``images`` images (default: an epoch) after a warm-up."""
    batches, loader = timing_loader(dataset, workers=workers, batch_size=batch_size)
    stream, count = epochs_of(batches), images or len(dataset)
    return statistics.median([timed_images(stream, count, queue_depth(loader)) for _ in range(rounds + 1)][1:])


def ratio(entry: dict, baseline: dict) -> float:
    """``entry``'s speed over ``baseline``'s (two rows of :func:`measure`): the median, over rounds, of their
    rates' ratio in the same round, so a slow spell of a shared machine moves one round's ratio, not a whole
    entry's figure against another's."""
    return statistics.median(e / b for e, b in zip(entry["rounds_images_per_s"], baseline["rounds_images_per_s"]))


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
    iterator = loader._iterator  # DataLoader's own: persistent workers keep it between epochs
    for worker in iterator._workers if isinstance(iterator, _MultiProcessingDataLoaderIter) else []:
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


def measure(entries: dict[str, tuple[Any, list[Path] | None]], workers: int, rounds: int, batch_size: int,
            images: int | None = None, echo: Callable[[str], None] | None = None) -> list[dict]:
    """For every entry (name -> (dataset, files to evict before each round or None)): median images/s over
    ``rounds`` interleaved rounds after a warm-up round, and the memory of its workers. A round is ``images``
    images of each entry (None: an epoch of each)."""
    echo = echo or (lambda line: None)
    loaders = {name: timing_loader(dataset, workers=workers, batch_size=batch_size)
               for name, (dataset, _) in entries.items()}
    streams = {name: epochs_of(batches) for name, (batches, _) in loaders.items()}
    rates: dict[str, list[float]] = {name: [] for name in entries}
    for round_, (name, (dataset, cold)) in itertools.product(range(rounds + 1), entries.items()):
        if cold and round_:
            evict(cold)
        rate = timed_images(streams[name], images or len(dataset), queue_depth(loaders[name][1]))
        if round_:
            rates[name].append(rate)
        echo(f"  {name}: {'warm-up' if not round_ else f'round {round_}/{rounds}'}, {rate:.0f} images/s")
    results = []
    for name, (_, loader) in loaders.items():
        private, shared = worker_memory(loader)
        results.append({"name": name, "images_per_s": statistics.median(rates[name]),
                        "rounds_images_per_s": rates[name],
                        "worker_private_mb": private, "worker_shared_mb": shared})
    return results
