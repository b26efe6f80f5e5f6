"""What imagenet-pack may write or delete in DST: only what it made or can prove its own.

* Files it creates or writes there (locks, reports) are opened without following symbolic links and must be
  regular files of one link owned by this user; reports are written to a new file and renamed into place,
  which replaces a link planted at the report's path instead of writing through it.
* LMDB opens a shard's files by name, following links, and takes no descriptor, so a check of those names
  before LMDB opens them would race with whoever can change the folder. The race is made impossible by
  construction instead: the split and shard folders must be real folders owned by this user that no other
  user can write in (made so by us, or refused), each is opened once (not following links) and LMDB is
  given that open folder (``/proc/self/fd/N``), so renaming folders above it changes nothing; its
  ``data.mdb`` and ``lock.mdb``, checked through the open folder (regular files of one link, ours), can then
  be changed by nobody but this user between the check and LMDB's open.
* ``--overwrite`` removes only :func:`owned_files`: LMDB files in folders we name, each an environment that
  holds our metadata or conversion state, or nothing at all (LMDB was stopped before its first commit).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..contract.format import META_KEY, PROGRESS_KEY
from ..contract.layout import COMPACTING_FILE, LMDB_FILES, parse_shard_name, temporary_name
from ..contract.lmdbfile import DATA_FILE, holds_nothing
from ..contract.shardfiles import close_shard, meta_values
from ..errors import OutputExistsError, UnsafeOutputError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def own_file(st: os.stat_result) -> bool:
    """Whether ``st`` is a regular file of one link that this user owns: the only kind of file imagenet-pack
    writes or removes (never a link, a hard link to something else, a special file, another user's)."""
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.geteuid()


def open_own_file(path: Path) -> int:
    """A read-write descriptor on ``path`` (created if absent): never through a link, only a regular file
    of one link that this user owns; UnsafeOutputError otherwise."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafeOutputError(f"{path}: is a symbolic link; imagenet-pack never writes through one: "
                                    "remove it (someone may have planted it to make this run overwrite its target)"
                                    ) from None
        raise UnsafeOutputError(f"{path}: cannot create or open it ({exc.strerror or exc})") from None
    if not own_file(os.fstat(fd)):
        os.close(fd)
        raise UnsafeOutputError(f"{path}: is not a regular file of this user's with one link; imagenet-pack "
                                "writes only files it made: remove it")
    return fd


def write_file(path: Path, data: bytes) -> None:
    """Write ``path`` whole, as a new file renamed into place (never writing through a link planted there):
    every byte is written (``os.write`` may write fewer than it is given: on a nearly full disk it does), the
    file and then its folder are flushed to disk; any failure is an error and leaves the old file as it was."""
    tmp = temporary_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if path.is_dir() and not path.is_symlink():
            raise UnsafeOutputError(f"{path}: is a folder; the report cannot be written there")
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        raise UnsafeOutputError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def make_own_folder(path: Path) -> None:
    """Create ``path`` (and missing parents) or check it: see :func:`check_own_folder`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeOutputError(f"{path}: cannot create this folder ({exc.strerror or exc})") from None
    check_own_folder(path, os.lstat(path))


def check_own_folder(path: Path, st: os.stat_result) -> None:
    """UnsafeOutputError unless ``st`` (``path``'s, not following a link) is a real folder of this user's in
    which no other user can create, rename or remove a file."""
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeOutputError(f"{path}: is {'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'not a folder'}; "
                                "imagenet-pack writes databases only into folders it made: remove it")
    if st.st_uid != os.geteuid():
        raise UnsafeOutputError(f"{path}: belongs to user {st.st_uid}, not to this one ({os.geteuid()}); "
                                "imagenet-pack writes databases only into its own folders: remove it, or run as "
                                "its owner")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeOutputError(f"{path}: other users can write in it (mode {stat.S_IMODE(st.st_mode):o}), so they "
                                "could swap its files while imagenet-pack writes them: chmod go-w it")


def open_shard_folder(path: Path) -> tuple[int, str]:
    """(descriptor, path for LMDB) of the shard folder ``path``, made or checked (:func:`make_own_folder`),
    opened without following a link, and its LMDB files, where present, checked through it: regular files
    of one link owned by this user. The path for LMDB names the open folder itself where the system can
    (``/proc/self/fd/N``): see the module docstring."""
    make_own_folder(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnsafeOutputError(f"{path}: cannot open this folder ({exc.strerror or exc})") from None
    try:
        check_own_folder(path, os.fstat(fd))  # the folder opened is the one checked
        for name in LMDB_FILES:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not own_file(st):
                raise UnsafeOutputError(f"{path / name}: is not a regular file of one link of this user's (a "
                                        "symbolic link, a hard link, a special file or another user's); "
                                        "imagenet-pack never writes through one: remove it")
            if name == COMPACTING_FILE:  # a compaction killed before its rename: data.mdb is whole without it
                os.unlink(name, dir_fd=fd)
    except BaseException:
        os.close(fd)
        raise
    pinned = f"/proc/self/fd/{fd}"
    return fd, pinned if os.path.isdir(pinned) else str(path)


def owned_files(split_dir: Path) -> list[Path]:
    """Every file of the split's database, after proving each one is ours (see the module docstring).
    OutputExistsError naming what is not ours (nothing is deleted then)."""
    if split_dir.is_symlink():
        raise UnsafeOutputError(f"{split_dir}: is a symbolic link; imagenet-pack writes and removes databases "
                                "only in folders it made: remove the link")
    check_own_folder(split_dir, os.lstat(split_dir))
    files, foreign = [], []
    for entry in sorted(split_dir.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and parse_shard_name(entry.name):
            check_own_folder(entry, os.lstat(entry))
            inner = sorted(entry.iterdir())
            foreign += [f for f in inner if f.name not in LMDB_FILES or not _plain(f)]
            files += [f for f in inner if f.name in LMDB_FILES and _plain(f)]
        elif entry.name in LMDB_FILES and _plain(entry):
            files.append(entry)
        else:
            foreign.append(entry)
    foreign += [f.parent for f in files if f.name == DATA_FILE and not written_by_us(f.parent)]
    if foreign:
        names = ", ".join(str(f) for f in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise OutputExistsError(f"{split_dir}: holds files imagenet-pack did not write ({names}); --overwrite "
                                "only removes its own databases: move them away or choose another DST")
    return files


def _plain(path: Path) -> bool:
    """A regular file of one link of this user's (not through a link)."""
    return own_file(os.lstat(path))


def written_by_us(path: Path) -> bool:
    """Whether the LMDB environment at ``path`` holds our metadata or conversion progress, or nothing."""
    if holds_nothing(str(path / DATA_FILE)):
        return True
    try:
        value, progress = meta_values(path, META_KEY, PROGRESS_KEY)
        return progress is not None or (value is not None and b"imagenet_pack" in value)
    except Exception:  # noqa: BLE001 - any failure to read it: not provably ours
        return False
    finally:
        close_shard(path)


def remove_database(split_dir: Path, shard_dirs: list[Path] | None = None) -> None:
    """Delete a split's database (for --overwrite), or only ``shard_dirs`` of it, and the folders that leaves
    empty: only files proved ours, and each check and each deletion through the descriptor of the folder that
    was checked (``unlinkat``), so a folder swapped for a link to another database meanwhile changes nothing.
    DST and the split folder must be ones no other user can write in (UnsafeOutputError before anything is
    deleted otherwise)."""
    dst = split_dir.parent
    if dst.is_dir():
        check_own_folder(dst, os.lstat(dst))
    if not os.path.lexists(split_dir):
        return
    owned_files(split_dir)  # the whole split proved ours, by name, before anything goes
    split_fd = _open_folder(split_dir)
    try:
        check_own_folder(split_dir, os.fstat(split_fd))
        chosen = None if shard_dirs is None else {d.name for d in shard_dirs}
        emptied = True
        for entry in sorted(os.scandir(split_fd), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False) and parse_shard_name(entry.name):
                if chosen is not None and entry.name not in chosen:
                    emptied = False
                    continue
                shard_fd = _open_folder(split_dir / entry.name, split_fd)
                try:
                    check_own_folder(split_dir / entry.name, os.fstat(shard_fd))
                    _remove_environment(shard_fd, split_dir / entry.name)
                    empty = not os.listdir(shard_fd)
                finally:
                    os.close(shard_fd)
                if empty:
                    os.rmdir(entry.name, dir_fd=split_fd)
            elif entry.name in LMDB_FILES:
                if chosen is None:
                    continue  # the one-shard layout's files: removed together below
                emptied = False
            else:
                emptied = False
        if chosen is None:
            _remove_environment(split_fd, split_dir)
        remaining = os.listdir(split_fd)
    finally:
        os.close(split_fd)
    if emptied and not remaining:
        dst_fd = _open_folder(dst)
        try:
            os.rmdir(split_dir.name, dir_fd=dst_fd)
        finally:
            os.close(dst_fd)


def _open_folder(path: Path, parent_fd: int | None = None) -> int:
    """A descriptor on the folder ``path`` (its last name looked up in ``parent_fd`` when given), never
    through a link."""
    name = path.name if parent_fd is not None else str(path)
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                       dir_fd=parent_fd)
    except OSError as exc:
        raise UnsafeOutputError(f"{path}: cannot open this folder without following a link "
                                f"({exc.strerror or exc}); nothing in it is removed") from None


def _remove_environment(fd: int, where: Path) -> None:
    """Unlink the LMDB files in the open folder ``fd`` after proving them ours through it: regular files of
    one link of this user's, the environment holding our metadata or progress (or nothing)."""
    present = [name for name in os.listdir(fd) if name in LMDB_FILES]
    for name in present:
        if not own_file(os.stat(name, dir_fd=fd, follow_symlinks=False)):
            raise UnsafeOutputError(f"{where / name}: is not a regular file of one link of this user's; nothing "
                                    "more is removed")
    pinned = Path(f"/proc/self/fd/{fd}")  # the open folder itself, where the system can name it
    if DATA_FILE in present and not written_by_us(pinned if pinned.is_dir() else where):
        raise OutputExistsError(f"{where}: holds an LMDB environment imagenet-pack did not write; nothing more is "
                                "removed: move it away or choose another DST")
    for name in present:
        os.unlink(name, dir_fd=fd)
