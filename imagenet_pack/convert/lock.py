"""One conversion per output directory at a time, and never one that writes into its own input.

The lock is ``fcntl.flock`` on ``DST/.imagenet-pack.lock``: the kernel releases it when the holder exits or
is killed, so a crash never leaves a stale lock. The file holds the holder's pid, for the message.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from ..errors import ImagenetPackError

LOCK_NAME = ".imagenet-pack.lock"


class BusyError(ImagenetPackError):
    """Another conversion holds the output directory."""


def check_no_overlap(src: Path, dst: Path) -> None:
    """ImagenetPackError when SRC and DST are the same folder or one is inside the other (links resolved):
    the databases would be written among, or scanned as, the input."""
    a, b = src.resolve(), dst.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise ImagenetPackError(f"SRC {src} and DST {dst} overlap ({a} and {b}); write the databases to a "
                                "folder outside the input")


@contextlib.contextmanager
def hold_lock(dst: Path) -> Iterator[None]:
    """Hold ``dst``'s conversion lock for the ``with`` block; BusyError at once if another run holds it."""
    path = dst / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise BusyError(f"{dst}: another imagenet-pack convert (pid {holder}) is running on this output; "
                            "wait for it to finish (or stop it), then rerun") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
