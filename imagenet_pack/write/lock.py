"""One conversion per shard at a time, and never one that writes into its own input.

The locks (:mod:`imagenet_pack.shardlock`: one byte of DST's lock file per shard the run writes, on one
descriptor, held in a way no unrelated close can drop) let hosts writing different shards of one database
work side by side. The file is opened without following links (:func:`.ownership.open_own_file`), so a link
planted at its path cannot make a run write into another file.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..contract import shardlock
from ..errors import BusyError, DestinationError
from .ownership import open_own_file


def check_no_overlap(src: Path, dst: Path) -> None:
    """ImagenetPackError when SRC and DST are the same folder or one is inside the other (links resolved):
    the databases would be written among, or scanned as, the input."""
    a, b = src.resolve(), dst.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise DestinationError(f"SRC {src} and DST {dst} overlap ({a} and {b}); write the databases to a "
                                "folder outside the input")


@contextlib.contextmanager
def hold_lock(dst: Path, shards: tuple[int, ...] = (0,)) -> Iterator[None]:
    """Hold the locks of ``shards`` in ``dst`` for the ``with`` block; BusyError at once if another run holds
    one of them."""
    fd = open_own_file(shardlock.lock_path(dst))
    try:
        busy = shardlock.take(fd, shards)
        if busy is not None:
            raise BusyError(f"{dst}: another imagenet-pack convert (pid {shardlock.recorded_pid(fd, busy)}) is "
                            "running on this output; wait for it to finish (or stop it), then rerun")
        yield
    finally:
        shardlock.release(fd)
