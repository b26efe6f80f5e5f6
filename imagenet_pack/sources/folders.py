"""Building splits from folders: class-folder trees (ImageFolder's layout) and flat validation folders.

::

    ROOT/train/n01440764/n01440764_10026.JPEG       class folders: classes are the sorted folder names (or
    ROOT/val/n01440764/ILSVRC2012_val_00000293.JPEG a devkit's list), files in sorted(os.walk) order with
                                                    ImageFolder's extensions: targets equal ImageFolder's
    ROOT/val/ILSVRC2012_val_00000001.JPEG           flat validation images, labelled by a devkit or a CSV
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Iterable

from ..errors import LayoutError
from .items import Item, SplitSource, is_image_name, unstorable
from .synsets import class_names

SPLITS = ("train", "val")


def scan_class_folders(split_dir: Path, split: str, wnids: list[str] | None = None,
                       names: dict[str, tuple[str, ...]] | None = None) -> SplitSource:
    """Read ``split_dir/<wnid>/...`` like ImageFolder; ``wnids`` fixes the class list (e.g. from a devkit)."""
    if not split_dir.is_dir():
        raise LayoutError(f"{split_dir}: no such directory; expected {split_dir}/<wnid>/<image files>")
    entries = list(os.scandir(split_dir))
    folders = sorted(entry.name for entry in entries if entry.is_dir())
    loose = sorted((f"{split_dir.name}/{e.name}", "a file beside the class folders, not in one")
                   for e in entries if not e.is_dir())
    if not folders:
        raise LayoutError(f"{split_dir}: no class folders found; expected {split_dir}/<wnid>/<image files>")
    if wnids is None:
        wnids = folders
    index = {wnid: i for i, wnid in enumerate(wnids)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise LayoutError(f"{split_dir}: class folders {unknown[:5]} are not among the {len(wnids)} known wnids")
    items: list[Item] = []
    ignored: list[tuple[str, str]] = loose
    for folder in folders:
        found = 0
        for dirpath, _, filenames in sorted(os.walk(split_dir / folder, followlinks=True)):
            rel_dir = os.path.relpath(dirpath, split_dir.parent)  # once per folder: 1.28 M relpaths cost seconds
            for name in sorted(filenames):
                full, rel = f"{dirpath}/{name}", f"{rel_dir}/{name}"
                if unstorable(rel):
                    ignored.append((rel, unstorable(rel)))
                elif is_image_name(name):
                    st = os.stat(full)
                    items.append(Item(rel, index[folder], full, 0, st.st_size, st.st_mtime_ns))
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


VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG", re.IGNORECASE)


Entry = tuple[str, str, int, int, int]  # name, file, offset, size, mtime (ns)


def flat_val(split: str, entries: Iterable[Entry], label: Callable[[str], str], wnids: list[str],
             names: dict[str, tuple[str, ...]] | None, description: str,
             ignored: Iterable[tuple[str, str]] = ()) -> SplitSource:
    """Validation images without class folders; ``label`` maps a file name to its wnid; ``ignored`` lists
    (name, reason) for what was passed over. Items are in file name order."""
    index = {wnid: i for i, wnid in enumerate(wnids)}
    items, ignored = [], [(f"{split}/{name}", reason) for name, reason in ignored]
    for name, file, offset, size, mtime in sorted(entries):
        rel = f"{split}/{name}"
        if unstorable(rel):
            ignored.append((rel, unstorable(rel)))
            continue
        if not is_image_name(name):
            ignored.append((rel, "not an image file name (ImageFolder's extensions)"))
            continue
        wnid = label(name)
        if wnid not in index:
            raise LayoutError(f"{description}: {name} is labelled {wnid}, which is not among the {len(wnids)} classes")
        items.append(Item(rel, index[wnid], file, offset, size, mtime))
    if not items:
        raise LayoutError(f"{description}: no validation images found")
    return SplitSource(split, list(wnids), class_names(list(wnids), names), items, ignored, description)


def val_number(name: str, where: str) -> int:
    """The 1-based image number in ``ILSVRC2012_val_00000001.JPEG``."""
    match = VAL_NAME.fullmatch(name)
    if match is None:
        raise LayoutError(f"{where}: {name} is not named ILSVRC2012_val_NNNNNNNN.JPEG, so it has no label")
    return int(match.group(1))


def folder_entries(folder: Path) -> tuple[list[Entry], list[tuple[str, str]]]:
    """An entry for every file directly in ``folder``, and (name, reason) for what else is there."""
    entries, ignored = [], []
    for e in os.scandir(folder):
        if e.is_file():
            st = e.stat()
            entries.append((e.name, e.path, 0, st.st_size, st.st_mtime_ns))
        else:
            ignored.append((e.name, "a folder inside the flat validation folder"))
    return entries, sorted(ignored)


def is_flat(folder: Path) -> bool:
    """A folder of images rather than of class folders."""
    return folder.is_dir() and any(e.is_file() and is_image_name(e.name) for e in os.scandir(folder))
