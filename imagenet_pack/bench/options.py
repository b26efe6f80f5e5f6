"""What a bench run is asked to measure (:class:`BenchOptions`), and where its JPEG trees are."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BenchError
from ..sources.items import SplitSource


@dataclass(frozen=True)
class BenchOptions:
    """What to measure: ``images`` (the SRC the database was converted from, in any layout convert reads, or
    one tree of class folders) adds the ImageFolder baselines; ``rounds`` timed rounds of ``limit`` images per
    entry after a warm-up (``limit`` None: whole epochs); ``workers`` loader processes; ``accuracy`` adds the
    accuracy table, with ``databases`` compared there too."""

    images: Path | None = None
    workers: int | None = None
    rounds: int = 3
    limit: int | None = 2000
    batch_size: int = 32
    feed_device: str | None = None  # also train ``feed_arch`` from each feed on this device (a GPU)
    feed_arch: str = "resnet50"
    feed_batch_size: int = 256
    feed_steps: int = 20
    accuracy: bool = False
    arch: str | None = None  # the accuracy table's model: a torchvision name, with ``weights``
    weights: Path | None = None
    databases: tuple[Path, ...] = field(default_factory=tuple)


def check_same_images(sources: dict[str, SplitSource], images: Path, root: Path, splits: dict[str, str]) -> None:
    """ImagenetPackError in one line unless ``sources`` (the images of ``images``, by split) hold the very files
    each database split (bench kind -> split of ``root``) was converted from: every path it lists. Read before
    any timing."""
    from ..read.dataset import LmdbImageNet
    for kind, split in splits.items():
        source = sources.get(kind) or next(iter(sources.values()))
        have = {within_split(item.path): item for item in source.items}
        paths = LmdbImageNet(root, split).paths
        missing = [p for p in paths if within_split(p) not in have]
        if missing:
            raise BenchError(
                f"{images}: not the images {root}/{split} was made from ({len(missing)} of its {len(paths)} "
                f"source files are not in it, e.g. {missing[0]}): give --images the SRC it was converted from")


def within_split(path: str) -> str:
    """A source path without its first folder (the split's, or the tree's own name), as both sides name it."""
    return path.split("/", 1)[-1]
