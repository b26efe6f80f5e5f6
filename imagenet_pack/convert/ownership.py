"""What imagenet-pack may write or delete in DST: only what it made or can prove its own.

* Files it creates or writes there (locks, reports) are opened without following symbolic links and must be
  regular files of one link owned by this user; reports are written to a new file and renamed into place,
  which replaces a link planted at the report's path instead of writing through it.
* Before LMDB opens a shard (LMDB opens its files by name, following links), the split and shard folders and
  the LMDB files in them are checked: real folders and regular files, no links.
* ``--overwrite`` removes only :func:`owned_files`: LMDB files in folders we name, each an environment that
  holds our metadata or conversion state, or nothing at all (LMDB was stopped before its first commit).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import OutputExistsError, UnsafeOutputError
from ..format import META_KEY, PROGRESS_KEY
from ..layout import LMDB_FILES, close_shard, meta_values, parse_shard_name
from ..lmdbfile import DATA_FILE, holds_nothing

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


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
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
        os.close(fd)
        raise UnsafeOutputError(f"{path}: is not a regular file of this user's with one link; imagenet-pack "
                                "writes only files it made: remove it")
    return fd


def write_file(path: Path, data: bytes) -> None:
    """Write ``path`` as a new file renamed into place (never writing through a link planted there)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if path.is_dir() and not path.is_symlink():
            raise UnsafeOutputError(f"{path}: is a folder; the report cannot be written there")
        os.replace(tmp, path)
    except OSError as exc:
        raise UnsafeOutputError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def make_own_folder(path: Path) -> None:
    """Create ``path`` (and missing parents) or check it: a real folder, not a link to one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeOutputError(f"{path}: cannot create this folder ({exc.strerror or exc})") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeOutputError(f"{path}: is {'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'not a folder'}; "
                                "imagenet-pack writes databases only into folders it made: remove it")


def check_shard_folder(path: Path) -> None:
    """Before LMDB opens the shard at ``path`` for writing: a real folder whose LMDB files, where present,
    are regular files of one link (LMDB would follow a link and write through it)."""
    make_own_folder(path)
    for name in LMDB_FILES:
        try:
            st = os.lstat(path / name)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise UnsafeOutputError(f"{path / name}: is not a regular file of one link (a symbolic link, a hard "
                                    "link or a special file); imagenet-pack never writes through one: remove it")


def owned_files(split_dir: Path) -> list[Path]:
    """Every file of the split's database, after proving each one is ours (see the module docstring).
    OutputExistsError naming what is not ours (nothing is deleted then)."""
    if split_dir.is_symlink():
        raise UnsafeOutputError(f"{split_dir}: is a symbolic link; imagenet-pack writes and removes databases "
                                "only in folders it made: remove the link")
    files, foreign = [], []
    for entry in sorted(split_dir.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and parse_shard_name(entry.name):
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
    return path.is_file() and not path.is_symlink()


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
    """Delete a split's database (for --overwrite), or only ``shard_dirs`` of it: only files
    :func:`owned_files` proved ours, then the folders they leave empty."""
    if not split_dir.exists():
        return
    files = owned_files(split_dir)
    if shard_dirs is not None:
        files = [f for f in files if f.parent in shard_dirs]
    for f in files:
        f.unlink()
    for folder in sorted({f.parent for f in files} | {split_dir}, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
