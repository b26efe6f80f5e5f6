"""``convert --repair``: a database checked end to end, and each shard found damaged converted again from SRC.

:func:`~imagenet_pack.verification.verify` names the shards holding a problem (a record failing its checksum,
an unreadable page, damaged metadata); a finished shard whose metadata cannot be read at all is damaged too.
Those shards are removed (every file proved ours, under the conversion's lock) and converted again by the
same conversion that made them; the others are kept as they are. An unfinished shard is left to the
conversion, which resumes it.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .contract.layout import find_shards
from .contract.shardfiles import close_shard, read_shard_meta
from .errors import FormatError, IncompleteShardError
from .read.reader import list_splits
from .verification import verify
from .write.converter import convert
from .write.options import ConvertOptions
from .write.report import ConvertReport


def damaged_shards(dst: Path, workers: int | None = None, progress: bool = False) -> dict[str, list[Path]]:
    """split -> its shards in ``dst`` that hold a problem, checked as ``imagenet-pack verify`` checks."""
    report = verify(dst, workers=workers, progress=progress)
    found: dict[str, list[Path]] = {}
    for split in list_splits(dst):
        for path in find_shards(dst / split):
            try:
                read_shard_meta(path)
                damaged = path in report.damaged
            except IncompleteShardError:
                damaged = False  # unfinished: the conversion resumes it
            except FormatError:
                damaged = True
            finally:
                close_shard(path)
            if damaged:
                found.setdefault(split, []).append(path)
    return found


def repair(src: Path | str, dst: Path | str, options: ConvertOptions | None = None, *,
           echo: Callable[[str], None] | None = None) -> ConvertReport:
    """Check the database at ``dst`` and convert its damaged shards again from ``src`` with ``options`` (those
    it was made with: other options are refused as a plain conversion refuses them); see the module
    docstring. ``echo`` receives a line per shard converted again."""
    dst, options = Path(dst), options or ConvertOptions()
    echo = echo or (lambda line: None)
    again = damaged_shards(dst, options.workers, options.progress) if dst.is_dir() else {}
    for shards in again.values():
        for path in shards:
            echo(f"{path}: damaged; converting it again from SRC")
    if not again:
        echo(f"{dst}: no damage found")
    return convert(src, dst, options, echo=echo, again=again)
