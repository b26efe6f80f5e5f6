"""The conversion locks of a database's shards, taken and asked about in one place (the converter takes them,
readers ask).

One lock file per DST (:func:`lock_path`) and one byte of it per shard: a conversion locks the bytes of
the shards it writes, on one descriptor however many shards (hosts writing different shards of one database
do not exclude each other). The locks are open-file-description locks (Linux's ``F_OFD_SETLK``): they
belong to the descriptor that took them, so no other open and close of the file can drop them (a POSIX
``lockf`` lock dies when its process closes *any* descriptor of the file, e.g. one opened only to ask who
holds it), and the kernel drops them when the holder exits or is killed, so a crash never leaves a stale
lock. A forked child (the converter's workers) closes its inherited copy of the descriptor at once. Where
the system has no OFD locks, ``lockf`` byte ranges stand in (a process must then not open the file twice).
Each shard's holder writes its pid at a slot of the file, for messages (a lock does not say whose it is).
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

LOCK_NAME = ".imagenet-pack.lock"

# struct flock on Linux x86-64 and arm64: type, whence, start, len, pid (0: an OFD lock's)
_FLOCK = struct.Struct("hhxxxxqqixxxx")
_OFD = hasattr(fcntl, "F_OFD_SETLK")
_PIDS_AT, _PID_BYTES = 4096, 16  # shard s's holder's pid at _PIDS_AT + s * _PID_BYTES
_HELD: set[int] = set()  # descriptors whose locks this process holds


def lock_path(dst: Path) -> Path:
    """The conversion locks of ``dst``: one file, a byte per shard (hosts writing different shards of one
    database share it)."""
    return dst / LOCK_NAME


def _close_inherited() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited)


def _lock_byte(fd: int, shard: int) -> bool:
    try:
        if _OFD:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, shard, 1, 0))
        else:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, shard, os.SEEK_SET)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def take(fd: int, shards: tuple[int, ...]) -> int | None:
    """Lock ``shards`` on the lock file open at ``fd`` without waiting, and write this process's pid for each;
    the first shard another holds (None when all were taken; then close ``fd`` with :func:`release`)."""
    _HELD.add(fd)
    for shard in shards:
        if not _lock_byte(fd, shard):
            return shard
    for shard in shards:
        os.pwrite(fd, f"{os.getpid():<{_PID_BYTES - 1}}\n".encode(), _PIDS_AT + shard * _PID_BYTES)
    return None


def release(fd: int) -> None:
    """Close ``fd``, which releases every lock taken on it."""
    _HELD.discard(fd)
    os.close(fd)


def recorded_pid(fd: int, shard: int) -> str:
    """The pid the holder of ``shard`` wrote, as text ("unknown" when none was written)."""
    text = os.pread(fd, _PID_BYTES, _PIDS_AT + shard * _PID_BYTES).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"


def holder(dst: Path, shard: int) -> int | None:
    """The pid of the conversion holding ``shard``'s lock in ``dst`` (None when none does, or nobody can
    tell; -1 when one does but wrote no pid), asked without taking the lock or creating its file."""
    try:
        fd = os.open(lock_path(dst), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        command = fcntl.F_OFD_GETLK if _OFD else fcntl.F_GETLK
        answer = fcntl.fcntl(fd, command, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, shard, 1, 0))
        if _FLOCK.unpack(answer)[0] == fcntl.F_UNLCK:
            return None
        pid = recorded_pid(fd, shard)
        return int(pid) if pid.isdigit() else -1
    except (OSError, struct.error):
        return None
    finally:
        os.close(fd)
