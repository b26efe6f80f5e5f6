"""What the converter reads: a split's classes and its ordered list of items, wherever they live.

An :class:`Item` is a byte range in a file: a whole image file in a folder tree, or a member's data inside
an uncompressed tar (so archives are read in place, never extracted). Layout modules build
:class:`SplitSource` objects; the converter only calls :func:`read_item`.
"""
from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass, field
from typing import NamedTuple

# torchvision's IMG_EXTENSIONS, matched case-insensitively, so the same files are taken as ImageFolder takes.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class Item(NamedTuple):
    """One source image: ``path`` names it (relative, stored in the metadata), ``file`` holds its bytes.
    (A named tuple: 1.28 M of them are built and pickled to workers, and a tuple is cheapest at both.)"""

    path: str
    target: int
    file: str
    offset: int = 0  # 0: the whole file; a tar member's data offset otherwise
    size: int = -1  # bytes (a tar member's, or the file's when scanned); -1: unknown
    mtime: int = -1  # modification time in ns when scanned (a tar member's in s * 1e9); -1: unknown

    @property
    def stamp(self) -> tuple[int, int]:
        """(size, mtime) as scanned: a converted file whose stamp differs on resume has changed."""
        return self.size, self.mtime


@dataclass
class SplitSource:
    """One split of the input: class list (sorted wnids), items in their deterministic order, ignored files."""

    split: str
    wnids: list[str]
    classes: list[tuple[str, ...]]
    items: list[Item]
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    description: str = ""
    expected_counts: dict[str, int] | None = None  # per-wnid image counts from a devkit, for the audit

    def fingerprint(self) -> str:
        """Identifies the input's structure (class list, names, labels): resuming into a database made from
        other input is refused."""
        digest = hashlib.sha256()
        digest.update("\n".join(self.wnids).encode())
        for item in self.items:  # names and labels only: a file edited since is found by its stamp
            digest.update(f"\n{item.path}\t{item.target}".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()


def read_item(item: Item) -> bytes:
    return read_item_stamped(item)[0]


def read_item_stamped(item: Item, max_bytes: int | None = None) -> tuple[bytes, tuple[int, int, int]]:
    """The item's bytes and its file's (inode, size, mtime): equal stamps mean the same bytes were read.
    OSError (EFBIG) for a file over ``max_bytes``, before anything is read."""
    with open(item.file, "rb") as handle:
        st = os.fstat(handle.fileno())
        whole = item.offset == 0  # a file of its own (a tar member's data never starts at byte 0)
        size = st.st_size if whole else item.size
        if max_bytes is not None and size > max_bytes:
            raise OSError(errno.EFBIG, f"{size} bytes, over the {max_bytes} byte limit")
        data = handle.read() if whole else os.pread(handle.fileno(), item.size, item.offset)
    return data, (st.st_ino, st.st_size, st.st_mtime_ns)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def unstorable(name: str) -> str | None:
    """Why a file name cannot be stored in the format (a newline separates stored paths), or None."""
    return "file name contains a newline, which the format cannot store; rename it" if "\n" in name else None
