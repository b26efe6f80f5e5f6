"""Facts about an LMDB data file that LMDB itself does not give: whether the file is as long as its header
says, and where in the file a mapped value lies."""
from __future__ import annotations

import os
import struct

from ..errors import FormatError

_META_PAGE = struct.Struct("<16xII16x4x4x40x48xQQ")  # magic, version, (page size at +40), last page, txn id
_PAGE_SIZE_AT = 16 + 4 + 4 + 8 + 8  # mm_dbs[FREE_DBI].md_pad holds the page size
_LMDB_MAGIC = 0xBEEFC0DE


def check_file_size(path: str) -> None:
    """FormatError unless ``path/data.mdb`` is as long as its own header says.

    A truncated file would be mapped anyway and reading a page past its end kills the process with SIGBUS;
    LMDB keeps two meta pages (pages 0 and 1), and the newer one names the last page in use."""
    data = os.path.join(path, "data.mdb")
    try:
        with open(data, "rb") as handle:
            head = handle.read(2 * 4096)
            size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise FormatError(f"{path}: cannot read data.mdb ({exc.strerror or exc})") from exc
    best = None
    for offset in (0, 4096):
        if len(head) < offset + _META_PAGE.size:
            continue
        magic, _, last_page, txn_id = _META_PAGE.unpack_from(head, offset)
        page_size = struct.unpack_from("<I", head, offset + _PAGE_SIZE_AT)[0]
        if magic == _LMDB_MAGIC and (best is None or txn_id > best[0]):
            best = (txn_id, last_page, page_size)
    if best is None:
        raise FormatError(f"{data}: not an LMDB file (no valid header); the shard is damaged, reconvert it")
    _, last_page, page_size = best
    needed = (last_page + 1) * page_size
    if size < needed:
        raise FormatError(f"{data}: file is {size} bytes but its header says {needed}: the shard is truncated "
                          "(an interrupted copy?); copy it again or reconvert")


def file_offset(address: int, path: str) -> int | None:
    """Where in ``path`` the mapped byte at ``address`` lies, from this process's memory map table (Linux's
    /proc/self/maps); None where there is no such table (the caller then copies)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="surrogateescape") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == path:
                    start, end = (int(v, 16) for v in fields[0].split("-"))
                    if start <= address < end:
                        return address - start + int(fields[2], 16)
    except OSError:
        return None
    return None
