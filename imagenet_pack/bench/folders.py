"""The baselines' input: torchvision's ``ImageFolder`` over exactly the files the converter takes.

``ImageFolder`` lists a tree with ``os.walk(followlinks=True)`` (a folder link that loops never ends) and
opens every name it lists (a FIFO blocks it for ever). The baseline must read the images the database was
made from, no more: :class:`SourceFolder` is an ``ImageFolder`` (same classes, targets, PIL loading and
transforms) whose file list is the converter's scan of the tree (regular files only, loops detected,
:mod:`imagenet_pack.sources.folders`) and whose loader reads each file as the converter does (never blocking,
never more than the converter's limit).
"""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image
from torchvision.datasets import ImageFolder

from ..sources.folders import class_folders, scan_class_folders
from ..sources.items import MAX_FILE_BYTES, Item, read_item


def load_image(path: str) -> Image.Image:
    """RGB PIL image of the file at ``path``, read as the converter reads it (see the module docstring)."""
    data, _ = read_item(Item(path, 0, path), MAX_FILE_BYTES)
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


class SourceFolder(ImageFolder):
    """``ImageFolder(root, transform)`` over the files the converter takes from the class-folder tree
    ``root``; ``ignored`` lists what it passed over and why."""

    def __init__(self, root: str | Path, transform=None):
        self.source = scan_class_folders(Path(root), Path(root).name, class_folders(Path(root)))
        self.ignored = self.source.ignored
        super().__init__(str(root), transform=transform, loader=load_image)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return list(self.source.wnids), {wnid: i for i, wnid in enumerate(self.source.wnids)}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        return [(item.file, item.target) for item in self.source.items]
