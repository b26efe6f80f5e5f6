"""What a converter worker does with one source position: read, validate, re-encode if needed, checksum.

Runs in the converter's worker processes (or in the parent with ``--workers 1``); the parent receives the
:class:`Result` objects in source order.
"""
from __future__ import annotations

import zlib
from typing import NamedTuple

from ..format import Problem, Row
from ..sources.items import Item, read_item_stamped
from .prepare import PrepareOptions, prepare

_OPTIONS: PrepareOptions | None = None
_IN_PARENT = False


def init_worker(options: PrepareOptions, in_parent: bool = False) -> None:
    global _OPTIONS, _IN_PARENT
    _OPTIONS, _IN_PARENT = options, in_parent
    # No cv2.setNumThreads() here: in a child forked from a parent whose OpenCV thread pool is running it
    # deadlocks (it waits for the parent's pool threads, which a fork does not copy). Decoding is serial anyway.


class Result(NamedTuple):
    """A worker's verdict on one source position.

    ``image`` is None when the source bytes are stored unchanged: the parent then reads them again (from the
    page cache, one copy) instead of receiving them through a pipe (four copies and the parent's CPU, which
    on a small machine competes with the workers). Re-encoded images travel as bytes.
    """

    shard: int
    position: int
    stored: bool
    image: bytes | None
    crc: int
    stamp: tuple  # the source file's (inode, size, mtime) when the worker read it
    height: int  # of the stored image
    width: int
    row: Row | Problem  # what the writer keeps: a Row when stored, else a Problem
    nbytes: int


def prepare_task(task: tuple[int, int, Item]) -> Result:
    """Read and validate one item (full decode), re-encode it if the policy says so, checksum it."""
    shard, position, item = task
    options = _OPTIONS if _OPTIONS is not None else PrepareOptions()
    try:
        data, stamp = read_item_stamped(item)
    except OSError as exc:
        return Result(shard, position, False, None, 0, (), 0, 0, Problem(position, f"cannot read: {exc.strerror or exc}"), 0)
    p = prepare(data, options)
    if p.image is None:
        return Result(shard, position, False, None, 0, (), 0, 0, Problem(position, p.reason), len(data))
    image = None if p.image is data and not _IN_PARENT else p.image
    return Result(shard, position, True, image, zlib.crc32(p.image), stamp, p.height, p.width,
                  Row(position, p.orig_height, p.orig_width, p.reason), len(data))
