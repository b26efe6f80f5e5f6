"""The baselines' input: torchvision's ``ImageFolder`` over exactly the files the converter takes.

``ImageFolder`` lists a tree with ``os.walk(followlinks=True)`` (a folder link that loops never ends) and
opens every name it lists (a FIFO blocks it for ever), and reads no other layout. The baseline must read the
images the database was made from, no more, in whatever layout they came: :func:`image_sources` reads
``--images`` with the converter's own layout detection (class folders, flat val + devkit, the official tars,
Kaggle's), and :class:`SourceFolder` is an ``ImageFolder`` (same classes, targets, PIL loading and transforms)
whose file list is one of those splits and whose loader reads each image as the converter does (regular
files or tar members only, never blocking, never more than the converter's limit).
"""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image
from torchvision.datasets import ImageFolder

from ..errors import BenchError, LayoutError
from ..sources.detect import discover
from ..sources.folders import class_folders, scan_class_folders
from ..sources.items import MAX_FILE_BYTES, Item, SplitSource, read_item
from .options import within_split


def image_sources(images: Path) -> dict[str, SplitSource]:
    """The train and val images under ``images``, found as ``imagenet-pack convert`` finds them; a tree of
    class folders alone stands for both. ImagenetPackError in one line when it is neither."""
    try:
        return discover(images, ("train", "val"))[0]
    except LayoutError as exc:
        wnids = class_folders(images) if images.is_dir() else []
        if not wnids:
            raise BenchError(f"--images {exc}") from None
        source = scan_class_folders(images, images.name, wnids)
        return {"train": source, "val": source}


def load_item(item: Item) -> Image.Image:
    """RGB PIL image of ``item``, read as the converter reads it (see the module docstring)."""
    data, _ = read_item(item, MAX_FILE_BYTES)
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


class SourceFolder(ImageFolder):
    """``ImageFolder`` over the images of ``source`` (one split as the converter reads it), or of those of its
    ``paths`` only, in that order (a database's records); ``ignored`` lists what the scan passed over and why."""

    def __init__(self, source: SplitSource, transform=None, paths: list[str] | None = None):
        self.source, self.ignored, self.items = source, source.ignored, source.items
        if paths is not None:  # the database's records, by their source path (the split's folder named apart)
            by_path = {within_split(item.path): item for item in source.items}
            missing = [p for p in paths if within_split(p) not in by_path]
            if missing:
                raise BenchError(f"{source.description}: has no image {missing[0]} (and {len(missing) - 1} more "
                                 "of the database's): give --images the SRC it was converted from")
            self.items = [by_path[within_split(p)] for p in paths]
        self.by_path = {item.path: item for item in self.items}
        super().__init__(source.description or source.split, transform=transform, loader=self._load)

    def _load(self, path: str) -> Image.Image:
        return load_item(self.by_path[path])

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return list(self.source.wnids), {wnid: i for i, wnid in enumerate(self.source.wnids)}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        return [(item.path, item.target) for item in self.items]
