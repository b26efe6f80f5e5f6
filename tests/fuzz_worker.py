"""One batch of the fuzz test, run in a subprocess (a signal shows as that process's death):
``python tests/fuzz_worker.py SOURCE_DB WORK FIRST COUNT EXPECTED_JSON``.

Each mutation damages a copy of the source database's data.mdb (rewritten in place in WORK: one copy of one
file per mutation), then reads every record through a dataset opened before the damage (the file changed
under it) and through a fresh one, then runs verify; one JSON line per mutation says what happened. A
record read back as other bytes without an error is a lie; anything but the package's errors escapes.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
import sys
from pathlib import Path

from imagenet_pack import verify
from imagenet_pack.contract.shardfiles import close_shard
from imagenet_pack.errors import ImagenetPackError
from imagenet_pack.read.reader import load_split

PAGE = 4096


def page_kinds(original: bytes) -> dict[str, list[int]]:
    """The pages in use of an LMDB file by kind (meta, branch, leaf, overflow, free)."""
    def kind(pg: int) -> str:
        if pg < 2:
            return "meta"
        flags = struct.unpack_from("<H", original, pg * PAGE + 10)[0]
        return {1: "branch", 2: "leaf", 4: "overflow"}.get(flags & 7, "free")

    by_kind: dict[str, list[int]] = {}
    for pg in range(len(original) // PAGE):
        if original[pg * PAGE:(pg + 1) * PAGE].strip(b"\0"):
            by_kind.setdefault(kind(pg), []).append(pg)
    return by_kind


def mutate(original: bytes, by_kind: dict[str, list[int]], rng: random.Random) -> tuple[bytes, str]:
    """A damaged copy: a page of some kind hit by bytes, words, runs, header damage, or the file cut."""
    data = bytearray(original)
    what = rng.choice(sorted(by_kind) + ["cut"])
    if what == "cut":
        at = rng.randrange(len(original))
        return bytes(data[:at]), f"file cut at byte {at}"
    pg = rng.choice(by_kind[what])
    base = pg * PAGE
    how = rng.choice(["byte", "bytes", "word16", "word32", "word64", "run", "header"])
    if how == "byte":
        data[base + rng.randrange(PAGE)] ^= 1 << rng.randrange(8)
    elif how == "bytes":
        for _ in range(rng.randint(2, 16)):
            data[base + rng.randrange(PAGE)] = rng.randrange(256)
    elif how == "header":  # the page header: pgno, pad, flags, lower, upper
        data[base + rng.randrange(16)] = rng.choice([0, 0xFF, rng.randrange(256)])
    else:
        width = {"word16": 2, "word32": 4, "word64": 8, "run": rng.randint(9, 200)}[how]
        at = base + rng.randrange(PAGE - width)
        value = rng.choice([b"\xff" * width, b"\0" * width, b"\x7f" + b"\xff" * (width - 1),
                            bytes(rng.randrange(256) for _ in range(width))])
        data[at:at + width] = value[:width]
    return bytes(data), f"{what} page {pg}, {how}"


def digests(info) -> list[str | None]:
    """Each record's image digest, or None where reading it raised the package's error."""
    out: list[str | None] = []
    shard = info.shards[0]
    for i in range(len(info)):
        try:
            out.append(hashlib.sha1(shard.read(i, f"record {i}").image).hexdigest())
        except ImagenetPackError:
            out.append(None)
    return out


def main(source: Path, work: Path, first: int, count: int, expected: list[str]) -> None:
    original = (source / "train" / "data.mdb").read_bytes()
    by_kind = page_kinds(original)
    dst = work / "db"
    shutil.copytree(source, dst)
    target = dst / "train" / "data.mdb"
    for n in range(first, first + count):
        data, what = mutate(original, by_kind, random.Random(n))
        target.write_bytes(original)
        opened = load_split(dst, "train")  # a reader with the good database open ...
        target.write_bytes(data)  # ... which is damaged in place under it (same file, as `cp` would)
        outcome = "clean"
        if any(d is not None for d in digests(opened)):
            outcome = f"LIE: a dataset opened before the file changed read records from it ({what})"
        try:
            info = load_split(dst, "train")
        except ImagenetPackError:
            info = None
        if info is not None:
            for i, got in enumerate(digests(info)):
                if got is not None and got != expected[i]:
                    outcome = f"LIE: record {i} read back other bytes without an error ({what})"
        report = verify(dst)
        if report.ok and outcome == "clean" and (info is None or digests(info) != expected):
            outcome = f"LIE: verify passed a database whose records differ ({what})"
        close_shard(dst / "train")
        print(json.dumps({"n": n, "what": what, "outcome": outcome, "verify_ok": report.ok}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
         json.load(open(sys.argv[5]))["train"])
