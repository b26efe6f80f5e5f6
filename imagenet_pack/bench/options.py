"""What a bench run is asked to measure (:class:`BenchOptions`), and where its JPEG trees are."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ImagenetPackError


@dataclass(frozen=True)
class BenchOptions:
    """What to measure: ``images`` (a class-folder tree, or the root holding train/ and val/) adds the
    ImageFolder baselines; ``rounds`` timed rounds of ``limit`` images per entry after a warm-up (``limit``
    None: whole epochs); ``workers`` loader processes; ``accuracy`` adds the accuracy table, with
    ``databases`` compared there too."""

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


def check_same_images(images: Path, root: Path, splits: dict[str, str]) -> None:
    """ImagenetPackError in one line unless the JPEG tree ``images`` holds the very files each database split
    (bench kind -> split of ``root``) was converted from: the same paths (a tree of class folders standing for
    every split), and the same size where the database kept it. Read before any timing."""
    import os

    from ..read.dataset import LmdbImageNet
    trees = split_dirs(images)
    for kind, split in splits.items():
        tree = trees.get(kind, next(iter(trees.values())))
        paths = LmdbImageNet(root, split).paths
        missing = [p for p in paths if not os.path.isfile(tree / p.split("/", 1)[-1])]
        if missing:
            raise ImagenetPackError(
                f"{images}: not the images {root}/{split} was made from ({len(missing)} of its {len(paths)} "
                f"source files are not in {tree}, e.g. {missing[0]}): give --images the SRC it was converted from")


def split_dirs(images: Path) -> dict[str, Path]:
    """The class-folder trees of ``images`` by split: ROOT/train and ROOT/val, or ROOT itself as both."""
    found = {s: images / s for s in ("train", "val") if (images / s).is_dir()}
    if not found and images.is_dir():
        found = {"train": images, "val": images}
    if not found:
        raise ImagenetPackError(f"{images}: not a folder of class folders (nor one holding train/ and val/)")
    return found
