"""Reading the official ILSVRC2012 tars in place: no extraction, no file written.

``ILSVRC2012_img_train.tar`` holds one uncompressed tar per class (``n01440764.tar``), each holding that
class's JPEGs; ``ILSVRC2012_img_val.tar`` holds the 50,000 validation JPEGs flat. In an uncompressed tar a
member's data is one contiguous byte range, so a member of an inner tar is a byte range of the outer file:
the scan reads only tar headers, and the converter's workers ``pread`` each image's range. Member names are
data, never paths: a name with a directory part or ``..`` is refused.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from ..errors import LayoutError
from .folders import flat_val
from .items import Item, SplitSource, is_image_name
from .synsets import class_names

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"


def _checked_name(name: str, where: str) -> str:
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise LayoutError(f"{where}: tar member {name!r} has a directory part or '..' in its name; "
                          "ILSVRC2012 archives hold plain file names, so this archive is not one")
    return name


def members(tar: tarfile.TarFile, where: str, base: int = 0, ignored: list | None = None
            ) -> list[tuple[str, int, int, int]]:
    """(name, absolute data offset, size, mtime in ns) of the regular files of ``tar`` (``base``: its offset in
    the file); (name, reason) of every other member (links, devices, folders) goes to ``ignored``."""
    out = []
    for m in tar:
        if m.isfile():
            out.append((_checked_name(m.name, where), base + m.offset_data, m.size, int(m.mtime * 1e9)))
        elif ignored is not None:
            kind = ("a symbolic link" if m.issym() else "a hard link" if m.islnk() else "a folder" if m.isdir()
                    else "a device or special file")
            ignored.append((m.name, f"{kind} in the archive, not a regular file"))
    return out


def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")  # uncompressed only: byte ranges must be readable in place
    except tarfile.TarError as exc:
        raise LayoutError(f"{path}: not an uncompressed tar archive ({exc})") from exc


def train_from_tar(path: Path, wnids: list[str], names: dict[str, tuple[str, ...]] | None,
                   expected_counts: dict[str, int] | None = None) -> SplitSource:
    """The train split of ``ILSVRC2012_img_train.tar``: classes from the inner tar names, sorted."""
    index = {wnid: i for i, wnid in enumerate(wnids)}
    by_class: dict[str, list[tuple[str, int, int, int]]] = {}
    ignored, others = [], []
    with _open(path) as outer:
        for name, offset, size, _ in members(outer, str(path), ignored=others):
            if not name.endswith(".tar"):
                ignored.append((f"train/{name}", "not a per-class tar in the train archive"))
                continue
            wnid = name[:-4]
            if wnid not in index:
                raise LayoutError(f"{path}: member {name} names class {wnid}, which is not among the "
                                  f"{len(wnids)} classes of the devkit")
            try:
                with tarfile.open(fileobj=outer.extractfile(name), mode="r:") as inner:
                    inner_others: list = []
                    by_class[wnid] = members(inner, f"{path}:{name}", offset, inner_others)
                    others += [(f"{wnid}/{n}", reason) for n, reason in inner_others]
            except tarfile.TarError as exc:
                raise LayoutError(f"{path}: member {name} is not a tar archive ({exc})") from exc
    ignored += [(f"train/{name}", reason) for name, reason in others]
    items = []
    for wnid in sorted(by_class):
        for name, offset, size, mtime in sorted(by_class[wnid]):
            rel = f"train/{wnid}/{name}"
            if is_image_name(name):
                items.append(Item(rel, index[wnid], str(path), offset, size, mtime))
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
        entries = [(name, str(path), offset, size, mtime) for name, offset, size, mtime in
                   members(tar, str(path), ignored=others)]
    return flat_val("val", entries, label, wnids, names, f"val archive {path} (read in place)", others)
