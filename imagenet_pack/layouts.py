"""Find the splits of an input tree: the class-folder layout torchvision's ImageFolder reads.

::

    ROOT/train/n01440764/n01440764_10026.JPEG
    ROOT/train/n01443537/...
    ROOT/val/n01440764/ILSVRC2012_val_00000293.JPEG

Classes are the sorted folder names, files are taken in ``sorted(os.walk)`` order with ImageFolder's
extensions, so targets and sample order equal ``ImageFolder``'s on the same tree.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import LayoutError
from .sources import Item, SplitSource, is_image_name
from .synsets import class_names

SPLITS = ("train", "val")


def scan_class_folders(split_dir: Path, split: str, wnids: list[str] | None = None,
                       names: dict[str, tuple[str, ...]] | None = None) -> SplitSource:
    """Read ``split_dir/<wnid>/...`` like ImageFolder; ``wnids`` fixes the class list (e.g. from a devkit)."""
    if not split_dir.is_dir():
        raise LayoutError(f"{split_dir}: no such directory; expected {split_dir}/<wnid>/<image files>")
    folders = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not folders:
        raise LayoutError(f"{split_dir}: no class folders found; expected {split_dir}/<wnid>/<image files>")
    if wnids is None:
        wnids = folders
    index = {wnid: i for i, wnid in enumerate(wnids)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise LayoutError(f"{split_dir}: class folders {unknown[:5]} are not among the {len(wnids)} known wnids")
    items: list[Item] = []
    ignored: list[tuple[str, str]] = []
    for folder in folders:
        found = 0
        for dirpath, _, filenames in sorted(os.walk(split_dir / folder, followlinks=True)):
            rel_dir = os.path.relpath(dirpath, split_dir.parent)  # once per folder: 1.28 M relpaths cost seconds
            for name in sorted(filenames):
                full, rel = f"{dirpath}/{name}", f"{rel_dir}/{name}"
                if is_image_name(name):
                    items.append(Item(rel, index[folder], full))
                    found += 1
                else:
                    ignored.append((rel, "not an image file name (ImageFolder's extensions)"))
        if not found:
            raise LayoutError(f"{split_dir / folder}: class folder holds no image files; add images or remove it")
    return SplitSource(split, list(wnids), class_names(list(wnids), names), items, ignored,
                       f"class folders {split_dir}/<wnid>/")


def discover_folders(root: Path, splits: tuple[str, ...]) -> tuple[dict[str, SplitSource], list[str]]:
    """The requested splits present under ``root``, and a message for each absent one."""
    if not root.exists():
        raise LayoutError(f"{root}: input does not exist")
    if not root.is_dir():
        raise LayoutError(f"{root}: not a directory; expected a folder holding train/ and/or val/")
    found, notes = {}, []
    for split in splits:
        if (root / split).is_dir():
            found[split] = scan_class_folders(root / split, split)
        else:
            notes.append(f"{root / split}: absent, split '{split}' skipped")
    if not found:
        seen = sorted(p.name for p in root.iterdir())[:10]
        raise LayoutError(
            f"{root}: no split folder found; expected {', '.join(f'{s}/<wnid>/<images>' for s in splits)}, "
            f"saw {seen or 'an empty folder'}"
        )
    return found, notes
