"""Building splits from folders: class-folder trees (ImageFolder's layout) and flat validation folders.

::

    ROOT/train/n01440764/n01440764_10026.JPEG       class folders: files in sorted order with ImageFolder's
    ROOT/val/n01440764/ILSVRC2012_val_00000293.JPEG extensions; one class list for the whole database: the
                                                    sorted union of every split's folders (or a devkit's)
    ROOT/val/ILSVRC2012_val_00000001.JPEG           flat validation images, labelled by a devkit or a CSV

Only regular files are taken (symbolic links to them included); anything else in a class folder (a FIFO, a
device, a broken link, a folder link that loops) is listed as ignored with what it is. A folder that cannot
be read is an error naming it, never silently passed over.
"""
from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..contract.format import path_problem
from ..errors import LayoutError
from .items import Item, SplitSource, file_kind, is_image_name
from .synsets import class_names

SPLITS = ("train", "val")


def _listing(folder: Path | str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as exc:
        raise LayoutError(f"{folder}: cannot read this folder ({exc.strerror or exc}); fix its permissions") from exc


def class_folders(split_dir: Path) -> list[str]:
    """The class folder names of a split folder, sorted; LayoutError for a name that is not text."""
    names = [e.name for e in _listing(split_dir) if _is_dir(e)]
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise LayoutError(f"{split_dir}: class folder {os.fsencode(name)!r} is not a UTF-8 name, so it is no "
                              "wnid; rename or remove it") from None
    return names


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


def _walk(folder: str, seen: set[tuple[int, int]]) -> Iterator[tuple[str, list[os.DirEntry], list[str]]]:
    """(folder, its non-folder entries, folder links that loop) for ``folder`` and every folder below it in
    sorted depth-first order, following links once per real folder; a stack, not recursion, so no depth of
    nesting can exhaust Python's."""
    stack = [folder]
    while stack:
        current = stack.pop()
        files, loops, subfolders = [], [], []
        for entry in _listing(current):
            if _is_dir(entry):
                st = entry.stat()
                if (st.st_dev, st.st_ino) in seen:
                    loops.append(entry.name)
                else:
                    seen.add((st.st_dev, st.st_ino))
                    subfolders.append(entry.path)
            else:
                files.append(entry)
        yield current, files, loops
        stack.extend(reversed(subfolders))


def _entry_kind(entry: os.DirEntry) -> tuple[os.stat_result | None, str | None]:
    """(stat, None) for a regular file (a link to one included), else (None, why it is not read)."""
    try:
        st = entry.stat()  # follows links
    except OSError as exc:
        link = entry.is_symlink()
        return None, "a broken symbolic link" if link else f"cannot be read ({exc.strerror or exc})"
    if not stat.S_ISREG(st.st_mode):
        return None, f"{file_kind(st.st_mode)}, not a regular file"
    return st, None


def scan_class_folders(split_dir: Path, split: str, wnids: list[str],
                       names: dict[str, tuple[str, ...]] | None = None) -> SplitSource:
    """Read ``split_dir/<wnid>/...`` like ImageFolder, with the database's class list ``wnids`` (the sorted
    union of every split's folders, or a devkit's list)."""
    if not split_dir.is_dir():
        raise LayoutError(f"{split_dir}: no such directory; expected {split_dir}/<wnid>/<image files>")
    folders = class_folders(split_dir)
    ignored = [(f"{split_dir.name}/{e.name}", "a file beside the class folders, not in one")
               for e in _listing(split_dir) if not _is_dir(e)]
    if not folders:
        raise LayoutError(f"{split_dir}: no class folders found; expected {split_dir}/<wnid>/<image files>")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise LayoutError(f"{split_dir}: class folders {unknown[:5]} are not among the {len(wnids)} known wnids")
    items: list[Item] = []
    for folder in folders:
        found = 0
        root = split_dir / folder
        for dirpath, entries, loops in _walk(str(root), {(root.stat().st_dev, root.stat().st_ino)}):
            rel_dir = os.path.relpath(dirpath, split_dir.parent)  # once per folder: 1.28 M relpaths cost seconds
            ignored += [(f"{rel_dir}/{name}", "a folder link that loops back to a folder already read")
                        for name in loops]
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}"
                problem = path_problem(rel)
                if problem:
                    ignored.append((rel, problem))
                    continue
                if not is_image_name(entry.name):
                    ignored.append((rel, "not an image file name (ImageFolder's extensions)"))
                    continue
                st, why = _entry_kind(entry)
                if st is None:
                    ignored.append((rel, why or "not a regular file"))
                    continue
                items.append(Item(rel, index[folder], entry.path, 0, st.st_size, st.st_mtime_ns))
                found += 1
        if not found:
            raise LayoutError(f"{root}: class folder holds no image files; add images or remove it")
    return SplitSource(split, list(wnids), class_names(list(wnids), names), items, ignored,
                       f"class folders {split_dir}/<wnid>/")


def discover_folders(root: Path, splits: tuple[str, ...]) -> tuple[dict[str, SplitSource], list[str]]:
    """The requested splits present under ``root``, with one class list for the database (the sorted union
    of the class folders of every split folder present), and a message for each absent one."""
    if not root.exists():
        raise LayoutError(f"{root}: input does not exist")
    if not root.is_dir():
        raise LayoutError(f"{root}: not a directory; expected a folder holding train/ and/or val/")
    present = [s for s in SPLITS if (root / s).is_dir()]
    wnids = sorted({w for s in present for w in class_folders(root / s)})
    found, notes = {}, []
    for split in splits:
        if (root / split).is_dir():
            found[split] = scan_class_folders(root / split, split, wnids)
            held = len({item.target for item in found[split].items})
            if held < len(wnids):
                notes.append(f"{root / split}: images of {held} of the database's {len(wnids)} classes (targets "
                             "index the whole class list, the same in every split)")
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
        problem = path_problem(rel)
        if problem:
            ignored.append((rel, problem))
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
    """An entry for every regular file directly in ``folder``, and (name, reason) for what else is there."""
    entries, ignored = [], []
    for e in _listing(folder):
        if _is_dir(e):
            ignored.append((e.name, "a folder inside the flat validation folder"))
            continue
        st, why = _entry_kind(e)
        if st is None:
            ignored.append((e.name, why or "not a regular file"))
        else:
            entries.append((e.name, e.path, 0, st.st_size, st.st_mtime_ns))
    return entries, ignored


def is_flat(folder: Path) -> bool:
    """A folder of images rather than of class folders (a stray image beside class folders does not count)."""
    if not folder.is_dir():
        return False
    entries = _listing(folder)
    return not any(_is_dir(e) for e in entries) and any(is_image_name(e.name) for e in entries)
