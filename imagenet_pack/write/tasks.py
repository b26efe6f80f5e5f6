"""What a converter worker does with one item: read, validate, re-encode if needed, checksum.

Runs in the converter's worker processes (or in the parent with ``--workers 1``); the parent receives the
:class:`Result` objects in source order.
"""
from __future__ import annotations

import errno
import hashlib
import os
import zlib
from typing import NamedTuple

from ..sources.items import Item, NotRegularFile, read_item
from .prepare import PrepareOptions, prepare
from .state import Problem, Row

_OPTIONS: PrepareOptions | None = None
_IN_PARENT = False


def init_worker(options: PrepareOptions, in_parent: bool = False) -> None:
    global _OPTIONS, _IN_PARENT
    _OPTIONS, _IN_PARENT = options, in_parent
    # OpenCV's own pixel limit, a second fence behind the header check in prepare() (read at first decode)
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(options.max_pixels))
    # No cv2.setNumThreads() here: in a child forked from a parent whose OpenCV thread pool is running it
    # deadlocks (it waits for the parent's pool threads, which a fork does not copy). Decoding is serial anyway.


class Result(NamedTuple):
    """A worker's verdict on one item.

    ``image`` is None when the source bytes are stored unchanged: the parent then reads them again (from the
    page cache, one copy) instead of receiving them through a pipe (four copies and the parent's CPU, which
    on a small machine competes with the workers). Re-encoded images travel as bytes.
    """

    shard: int
    item: int
    stored: bool
    image: bytes | None
    image_crc: int  # CRC-32 of the stored image bytes
    read_id: tuple  # (inode, size, mtime) of the file the worker read: the parent's re-read must match it
    height: int  # of the stored image
    width: int
    row: Row | Problem  # what the writer keeps: a Row when stored, else a Problem
    nbytes: int


# failures of the machine, not of the file's bytes: reported as such, and tried again by every rerun
ENVIRONMENTAL = {errno.ENOMEM, errno.EACCES, errno.EPERM, errno.EIO, errno.EMFILE, errno.ENFILE, errno.EINTR,
                 errno.EAGAIN, errno.ENOSPC, errno.ESTALE}


def content_digest(data: bytes) -> str:
    """What a verdict about a file's bytes is keyed by."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def prepare_task(task: tuple[int, int, Item]) -> Result:
    """Read and validate one item (full decode), re-encode it if the policy says so, checksum it."""
    shard, position, item = task
    options = _OPTIONS if _OPTIONS is not None else PrepareOptions()
    try:
        data, read_id = read_item(item, options.max_bytes)
    except NotRegularFile as exc:
        return _skipped(shard, position, item, f"{exc.strerror}: not read", 0)
    except OSError as exc:
        again = " (tried again by a rerun)" if exc.errno in ENVIRONMENTAL else ""
        return _skipped(shard, position, item, f"cannot read: {exc.strerror or exc}{again}", 0)
    try:
        p = prepare(data, options)
    except MemoryError:
        return _skipped(shard, position, item, "out of memory while decoding (tried again by a rerun)", len(data))
    except OSError as exc:
        if exc.errno in ENVIRONMENTAL:
            return _skipped(shard, position, item, f"cannot decode: {exc.strerror or exc} (tried again by a rerun)",
                            len(data))
        return _skipped(shard, position, item, f"cannot decode: {type(exc).__name__}: {str(exc).strip()[:200]}",
                        len(data), data)
    except Exception as exc:  # noqa: BLE001 - any failure on one file's bytes (OpenCV, ...) skips that file
        return _skipped(shard, position, item, f"cannot decode: {type(exc).__name__}: {str(exc).strip()[:200]}",
                        len(data), data)
    if p.image is None:
        return _skipped(shard, position, item, p.skip or "not stored", len(data), data)
    image = None if p.image is data and not _IN_PARENT else p.image
    return Result(shard=shard, item=position, stored=True, image=image, image_crc=zlib.crc32(p.image),
                  read_id=read_id, height=p.height, width=p.width,
                  row=Row(position, p.height, p.width, p.fixed, *item.stamp), nbytes=len(data))


def _skipped(shard: int, position: int, item: Item, reason: str, nbytes: int, content: bytes | None = None) -> Result:
    """Not stored: a verdict about ``content`` (the bytes read), or, without it, a failure to try again."""
    digest = content_digest(content) if content is not None else ""
    return Result(shard=shard, item=position, stored=False, image=None, image_crc=0, read_id=(), height=0, width=0,
                  row=Problem(position, reason, *item.stamp, digest), nbytes=nbytes)
