"""A shard's resumable state while it is being written (the ``progress`` and ``rows/`` keys of its ``meta``
table, specified in docs/FORMAT.md and removed by the shard's final commit).

Vocabulary: an *item* is a source file's place in the shard's range of the split's source list (0-based);
a *record* is a stored item. Each commit stores a batch of records with the rows that describe them and the
progress that says where to continue.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import msgpack

from ..contract.format import ROWS_PREFIX, checked_int, text
from ..errors import FormatError


class Row(NamedTuple):
    """What the writer keeps per stored record until the final commit: its item, the stored image's size,
    what was fixed (None when stored as it was), and the source file's size and mtime as scanned (a resumed
    run converts again from the first file changed since)."""

    item: int
    height: int
    width: int
    fixed: str | None
    source_size: int = -1
    source_mtime: int = -1

    @property
    def stamp(self) -> tuple[int, int]:
        return self.source_size, self.source_mtime


class Problem(NamedTuple):
    """An item that was not stored, why, its source's size and mtime when it was read, and ``digest``: for a
    verdict about the bytes (damaged, unsupported, too large) a digest of the bytes read, so a rerun stores
    it only once the content changed (the same bytes would fail the same way, whatever their stamp says); ""
    for a failure of the environment (unreadable, out of memory), which every rerun tries again."""

    item: int
    reason: str
    source_size: int = -1
    source_mtime: int = -1
    digest: str = ""

    @property
    def stamp(self) -> tuple[int, int]:
        return self.source_size, self.source_mtime


@dataclass(frozen=True)
class Progress:
    """A shard's resumable state (the ``progress`` key while a conversion runs)."""

    fingerprint: str
    next_item: int = 0  # the first item not yet committed
    count: int = 0  # records stored
    batches: int = 0  # committed ``rows/`` batches
    problems: tuple[Problem, ...] = ()

    def to_msgpack(self) -> bytes:
        return msgpack.packb({"fingerprint": self.fingerprint, "next_item": self.next_item, "count": self.count,
                              "batches": self.batches,
                              "problems": [[p.item, text(p.reason), *p.stamp, p.digest] for p in self.problems]},
                             use_bin_type=True)

    @classmethod
    def from_msgpack(cls, value: bytes, where: str) -> Progress:
        try:
            state = msgpack.unpackb(value, raw=False)
            problems = tuple(Problem(checked_int(p[0], "item"), str(p[1]), checked_int(p[2], "size", -1),
                                     checked_int(p[3], "mtime", -1 << 62), str(p[4]) if len(p) > 4 else "")
                             for p in state["problems"])
            return cls(str(state["fingerprint"]), checked_int(state["next_item"], "next_item"),
                       checked_int(state["count"], "count"), checked_int(state["batches"], "batches"), problems)
        except (KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
            raise FormatError(f"{where}: conversion progress is damaged ({exc}); rerun with --overwrite") from exc


def encode_rows(rows: list[Row]) -> bytes:
    return msgpack.packb([[r.item, r.height, r.width, r.fixed and text(r.fixed), r.source_size, r.source_mtime]
                          for r in rows], use_bin_type=True)


def decode_rows(value: bytes | None, where: str) -> list[Row]:
    try:
        return [Row(checked_int(i, "item"), checked_int(h, "height", 1), checked_int(w, "width", 1),
                    f if f is None else str(f), checked_int(s, "size", -1), checked_int(m, "mtime", -1 << 62))
                for i, h, w, f, s, m in msgpack.unpackb(value, raw=False)]
    except (TypeError, ValueError, msgpack.UnpackException) as exc:
        raise FormatError(f"{where}: conversion progress is damaged ({exc}); rerun with --overwrite") from exc


def rows_key(batch: int) -> bytes:
    return ROWS_PREFIX + b"%08d" % batch
