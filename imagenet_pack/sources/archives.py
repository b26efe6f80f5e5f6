"""Reading the official ILSVRC2012 tars in place: no extraction, no file written.

``ILSVRC2012_img_train.tar`` holds one uncompressed tar per class (``n01440764.tar``), each holding that
class's JPEGs; ``ILSVRC2012_img_val.tar`` holds the 50,000 validation JPEGs flat. In an uncompressed tar a
member's data is one contiguous byte range, so a member of an inner tar is a byte range of the outer file:
the scan reads only tar headers, and the converter's workers ``pread`` each image's range.

Member names are data, never paths: a name with a directory part or ``..`` is refused, one with a newline
is listed as ignored. An archive must be whole: Python's ``tarfile`` stops without a word at a header cut
short, so every archive is checked to end with its end-of-archive block and every member to lie inside it;
two members of one name are an error naming it (one would silently replace the other).
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

from ..contract.format import path_problem
from ..errors import LayoutError
from .folders import flat_val
from .items import Item, SplitSource, is_image_name
from .synsets import class_names

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
_BLOCK = 512


def _checked_name(name: str, where: str) -> str:
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise LayoutError(f"{where}: tar member {name!r} has a directory part or '..' in its name; "
                          "ILSVRC2012 archives hold plain file names, so this archive is not one")
    return name


def members(tar: tarfile.TarFile, path: Path, where: str, base: int, end: int, ignored: list
            ) -> list[tuple[str, int, int, int, tarfile.TarInfo]]:
    """(name, absolute data offset, size, mtime in ns, info) of the regular files of ``tar``, which spans bytes
    ``base``..``end`` of ``path``; (name, reason) of every other member (links, devices, folders, names with a
    newline) goes to ``ignored``. LayoutError for a duplicate name or an archive cut short."""
    out, names = [], set()
    try:
        for m in tar:
            if not m.isfile():
                kind = ("a symbolic link" if m.issym() else "a hard link" if m.islnk() else "a folder" if m.isdir()
                        else "a device or special file")
                ignored.append((m.name, f"{kind} in the archive, not a regular file"))
                continue
            if path_problem(m.name):
                ignored.append((m.name, path_problem(m.name)))
                continue
            name = _checked_name(m.name, where)
            if name in names:
                raise LayoutError(f"{where}: two members are named {name!r}; an ILSVRC2012 archive has one of each, "
                                  "so this one is damaged or not one")
            names.add(name)
            if base + m.offset_data + m.size > end:
                raise LayoutError(f"{where}: member {name!r} is cut short (the archive ends inside it); "
                                  "download or copy the archive again")
            out.append((name, base + m.offset_data, m.size, int(m.mtime * 1e9), m))
    except tarfile.TarError as exc:
        raise LayoutError(f"{where}: damaged tar archive ({exc})") from exc
    with open(path, "rb") as handle:
        tail = os.pread(handle.fileno(), _BLOCK, base + tar.offset)
    if base + tar.offset + _BLOCK > end or tail != bytes(_BLOCK):
        raise LayoutError(f"{where}: the archive is cut short or damaged after member "
                          f"{out[-1][0] if out else '(none)'!r} (no end-of-archive block where the members end); "
                          "download or copy it again")
    return out


def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")  # uncompressed only: byte ranges must be readable in place
    except (tarfile.TarError, OSError) as exc:
        raise LayoutError(f"{path}: not a readable uncompressed tar archive ({exc})") from exc


def train_from_tar(path: Path, wnids: list[str], names: dict[str, tuple[str, ...]] | None,
                   expected_counts: dict[str, int] | None = None) -> SplitSource:
    """The train split of ``ILSVRC2012_img_train.tar``: classes from the inner tar names, sorted."""
    index = {wnid: i for i, wnid in enumerate(wnids)}
    by_class: dict[str, list[tuple[str, int, int, int, tarfile.TarInfo]]] = {}
    ignored: list[tuple[str, str]] = []
    others: list[tuple[str, str]] = []
    size = path.stat().st_size
    with _open(path) as outer:
        for name, offset, length, _, info in members(outer, path, str(path), 0, size, others):
            if not name.endswith(".tar"):
                ignored.append((f"train/{name}", "not a per-class tar in the train archive"))
                continue
            wnid = name[:-4]
            if wnid not in index:
                raise LayoutError(f"{path}: member {name} names class {wnid}, which is not among the "
                                  f"{len(wnids)} classes of the devkit")
            try:
                with tarfile.open(fileobj=outer.extractfile(info), mode="r:") as inner:
                    inner_others: list = []
                    by_class[wnid] = members(inner, path, f"{path}:{name}", offset, offset + length, inner_others)
                    others += [(f"{wnid}/{n}", reason) for n, reason in inner_others]
            except tarfile.TarError as exc:
                raise LayoutError(f"{path}: member {name} is not a tar archive ({exc})") from exc
    ignored += [(f"train/{name}", reason) for name, reason in others]
    items = []
    for wnid in sorted(by_class):
        for name, offset, length, mtime, _ in sorted(by_class[wnid]):
            rel = f"train/{wnid}/{name}"
            if is_image_name(name):
                items.append(Item(rel, index[wnid], str(path), offset, length, mtime))
            else:
                ignored.append((rel, "not an image file name (ImageFolder's extensions)"))
    if not items:
        raise LayoutError(f"{path}: no images found in the train archive")
    return SplitSource("train", list(wnids), class_names(list(wnids), names), items, ignored,
                       f"train archive {path} (read in place)", expected_counts)


def val_from_tar(path: Path, label, wnids: list[str], names: dict[str, tuple[str, ...]] | None) -> SplitSource:
    """The val split of ``ILSVRC2012_img_val.tar``; ``label`` maps a file name to its wnid."""
    others: list = []
    with _open(path) as tar:
        entries = [(name, str(path), offset, length, mtime) for name, offset, length, mtime, _ in
                   members(tar, path, str(path), 0, path.stat().st_size, others)]
    return flat_val("val", entries, label, wnids, names, f"val archive {path} (read in place)", others)
