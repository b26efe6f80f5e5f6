"""What the converter reads: a split's classes and its ordered list of items, wherever they live.

An :class:`Item` is a byte range in a file: a whole image file in a folder tree, or a member's data inside
an uncompressed tar (so archives are read in place, never extracted). Layout modules build
:class:`SplitSource` objects; the converter only calls :func:`read_item`, which reads regular files only and
never more than a size limit, whatever the file claims to be.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..contract.format import path_bytes
from ..errors import LayoutError

MAX_FILE_BYTES = 1 << 28  # no image file is read past this (256 MiB): the largest ILSVRC2012 file is ~15 MB
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
        """(size, mtime) as scanned: a converted file whose stamp differs on a later scan has changed."""
        return self.size, self.mtime


@dataclass
class SplitSource:
    """One split of the input: class list (the database's, sorted wnids), items in their deterministic order,
    ignored files."""

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
        digest.update(path_bytes("\n".join(self.wnids)))
        for item in self.items:  # names and labels only: a file edited since is found by its stamp
            digest.update(path_bytes(f"\n{item.path}\t{item.target}"))
        return digest.hexdigest()


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, for a report line."""
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return kind
    return "a special file"


class NotRegularFile(OSError):
    """The path is not (or no longer) a regular file: it is never read."""


def read_item(item: Item, max_bytes: int) -> tuple[bytes, tuple[int, int, int]]:
    """The item's bytes and its file's (inode, size, mtime): equal identities mean the same bytes were read.

    Opens without blocking (a FIFO put in place of a file cannot hang the read) and reads only a regular file
    (NotRegularFile otherwise), never more than ``max_bytes`` (OSError EFBIG beyond, whatever ``stat``
    says) and never less than a tar member's size (OSError EIO: the archive is cut short)."""
    fd = os.open(item.file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, f"not a regular file but {file_kind(st.st_mode)}")
        if item.offset == 0:  # a file of its own (a tar member's data never starts at byte 0)
            if st.st_size > max_bytes:
                raise OSError(errno.EFBIG, f"{st.st_size} bytes, over the {max_bytes} byte limit")
            data = _read_at_most(fd, max_bytes + 1)
            if len(data) > max_bytes:
                raise OSError(errno.EFBIG, f"more than the {max_bytes} byte limit")
        else:
            if item.size > max_bytes:
                raise OSError(errno.EFBIG, f"{item.size} bytes, over the {max_bytes} byte limit")
            data = os.pread(fd, item.size, item.offset)
            if len(data) != item.size:
                raise OSError(errno.EIO, f"archive cut short: {len(data)} of the member's {item.size} bytes")
    finally:
        os.close(fd)
    return data, (st.st_ino, st.st_size, st.st_mtime_ns)


def read_side_file(path: Path | str, limit: int, what: str) -> bytes:
    """The bytes of a file the input's labels come from (a devkit's, Kaggle's CSV and mapping), read like an
    image: a regular file only, never blocking, never more than ``limit`` bytes (more than any real one
    holds). LayoutError in one line naming it otherwise."""
    try:
        data, _ = read_item(Item(str(path), 0, str(path)), limit)
    except NotRegularFile as exc:
        raise LayoutError(f"{path}: {exc.strerror}; the {what} must be a regular file") from None
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise LayoutError(f"{path}: over the {limit >> 20} MiB a {what} takes ({exc.strerror}); it is not one, "
                              "or it is damaged") from None
        raise LayoutError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    return data


class BoundedReader:
    """A file-like reader that raises LayoutError once more than ``limit`` bytes were read through it: what
    a compressed archive inflates to is bounded, whatever its headers claim."""

    def __init__(self, raw, limit: int, what: str):
        self.raw, self.left, self.limit, self.what = raw, limit, limit, what

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(self.left + 1 if size is None or size < 0 else min(size, self.left + 1))
        self.left -= len(data)
        if self.left < 0:
            raise LayoutError(f"{self.what}: inflates to more than {self.limit >> 20} MiB, far more than a real one; "
                              "it is not one, or it is damaged")
        return data


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)
