"""One conversion per shard at a time, and never one that writes into its own input.

The lock is a POSIX record lock (``fcntl.lockf``) on the shard's lock file in DST (``layout.lock_path``), one
for each shard the run writes (hosts writing different shards of one database do not exclude each other):
the kernel releases it when the holder exits or is killed, so a crash never leaves a stale lock, and unlike
``flock`` it is not inherited by the converter's forked workers. The file holds the holder's pid, for the
message; it is opened without following links (:func:`.ownership.open_own_file`), so a link planted at its
path cannot make a run write into another file.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from ..errors import BusyError, ImagenetPackError
from ..layout import lock_path
from .ownership import open_own_file


def check_no_overlap(src: Path, dst: Path) -> None:
    """ImagenetPackError when SRC and DST are the same folder or one is inside the other (links resolved):
    the databases would be written among, or scanned as, the input."""
    a, b = src.resolve(), dst.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise ImagenetPackError(f"SRC {src} and DST {dst} overlap ({a} and {b}); write the databases to a "
                                "folder outside the input")


@contextlib.contextmanager
def hold_lock(dst: Path, shards: tuple[int, ...] = (0,)) -> Iterator[None]:
    """Hold the locks of ``shards`` in ``dst`` for the ``with`` block; BusyError at once if another run holds
    one of them."""
    with contextlib.ExitStack() as stack:
        for shard in shards:
            stack.enter_context(_locked(dst, lock_path(dst, shard)))
        yield


@contextlib.contextmanager
def _locked(dst: Path, path: Path) -> Iterator[None]:
    fd = open_own_file(path)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise BusyError(f"{dst}: another imagenet-pack convert (pid {holder}) is running on this output; "
                            "wait for it to finish (or stop it), then rerun") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
