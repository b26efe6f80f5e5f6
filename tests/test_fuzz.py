"""Fuzzing the reader and verify over randomly damaged copies of a real database: whatever the damage (meta
pages, branch and leaf pages, overflow pages, free pages; single bytes, words, runs), reading every record
gives the package's error or the right bytes, verify reports problems or the right database, and nothing
dies of a signal, raises anything else, or hangs.

Each batch of mutations runs in a subprocess, so a signal (SIGBUS, SIGSEGV) shows as a failure naming the
batch. IMAGENET_PACK_FUZZ_MUTATIONS sets how many mutations run (default 1200, about half a minute on 2
cores); the longer run is ``IMAGENET_PACK_FUZZ_MUTATIONS=20000 pytest tests/test_fuzz.py``.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from imagenet_pack import convert
from imagenet_pack.synthetic import make_sample_tree

from helpers import opts

MUTATIONS = int(os.environ.get("IMAGENET_PACK_FUZZ_MUTATIONS", "1200"))
BATCH = 150

WORKER = textwrap.dedent(r"""
    import hashlib, json, os, random, shutil, struct, sys
    from pathlib import Path
    from imagenet_pack.errors import ImagenetPackError
    from imagenet_pack.layout import close_shard
    from imagenet_pack.read.reader import close_handle, load_split, open_handle
    from imagenet_pack.format import encode_key
    from imagenet_pack import verify

    source, work, first, count, expected_file = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), \
        int(sys.argv[4]), sys.argv[5]
    expected = json.load(open(expected_file))  # split -> list of record image hex digests
    original = (source / "train" / "data.mdb").read_bytes()
    page = 4096
    pages = len(original) // page

    def kind(pg):
        if pg < 2:
            return "meta"
        flags = struct.unpack_from("<H", original, pg * page + 10)[0]
        return {1: "branch", 2: "leaf", 4: "overflow"}.get(flags & 7, "free")

    used = [pg for pg in range(pages) if original[pg * page:(pg + 1) * page].strip(b"\0")]
    by_kind = {}
    for pg in used:
        by_kind.setdefault(kind(pg), []).append(pg)

    def mutate(rng):
        data = bytearray(original)
        what = rng.choice(sorted(by_kind))
        pg = rng.choice(by_kind[what])
        base = pg * page
        how = rng.choice(["byte", "bytes", "word16", "word32", "word64", "run", "header"])
        if how == "byte":
            data[base + rng.randrange(page)] ^= 1 << rng.randrange(8)
        elif how == "bytes":
            for _ in range(rng.randint(2, 16)):
                data[base + rng.randrange(page)] = rng.randrange(256)
        elif how == "header":  # the page header: pgno, pad, flags, lower, upper
            at = base + rng.randrange(16)
            data[at] = rng.choice([0, 0xFF, rng.randrange(256)])
        else:
            width = {"word16": 2, "word32": 4, "word64": 8, "run": rng.randint(9, 200)}[how]
            at = base + rng.randrange(page - width)
            value = rng.choice([b"\xff" * width, b"\0" * width, b"\x7f" + b"\xff" * (width - 1),
                                bytes(rng.randrange(256) for _ in range(width))])
            data[at:at + width] = value[:width]
        return bytes(data), f"{what} page {pg}, {how}"

    for n in range(first, first + count):
        rng = random.Random(n)
        data, what = mutate(rng)
        dst = work / f"m{n}"
        shutil.copytree(source, dst)
        (dst / "train" / "data.mdb").write_bytes(data)
        outcome = "clean"
        try:
            info = load_split(dst, "train")
        except ImagenetPackError:
            info = None
        if info is not None:
            handle = open_handle(info.shards[0].path)
            for i in range(len(info)):
                try:
                    record = handle.read(encode_key(i), f"record {i}")
                except ImagenetPackError:
                    continue
                if record is not None and hashlib.sha1(record.image).hexdigest() != expected["train"][i]:
                    outcome = f"LIE: record {i} read back other bytes without an error ({what})"
            close_handle(info.shards[0].path)
        report = verify(dst)
        if report.ok and outcome == "clean":
            info = load_split(dst, "train")
            handle = open_handle(info.shards[0].path)
            got = [hashlib.sha1(handle.read(encode_key(i), "r").image).hexdigest() for i in range(len(info))]
            close_handle(info.shards[0].path)
            if got != expected["train"]:
                outcome = f"LIE: verify passed a database whose records differ ({what})"
        for split in ("train", "val"):
            close_shard(dst / split)
        shutil.rmtree(dst)
        print(json.dumps({"n": n, "what": what, "outcome": outcome, "verify_ok": report.ok}), flush=True)
""")


@pytest.fixture(scope="module")
def fuzz_db(tmp_path_factory) -> tuple[Path, Path]:
    """A real database: photo-like JPEGs of several sizes, so records use overflow pages and the tails table."""
    root = tmp_path_factory.mktemp("fuzz")
    src = make_sample_tree(root / "src", classes=3, train_per_class=70, val_per_class=1, size=(40, 56), seed=3)
    convert(src, root / "db", opts(splits=("train",)))
    from imagenet_pack import LmdbImageNet
    ds = LmdbImageNet(root / "db", "train")
    expected = root / "expected.json"
    expected.write_text(json.dumps({"train": [hashlib.sha1(ds.read_record(i).image).hexdigest()
                                              for i in range(len(ds))]}))
    return root / "db", expected


def _run(batch: int, db: Path, expected: Path, work: Path) -> tuple[int, str, str]:
    folder = work / f"batch{batch}"
    folder.mkdir()
    result = subprocess.run([sys.executable, "-c", WORKER, str(db), str(folder), str(batch * BATCH),
                             str(min(BATCH, MUTATIONS - batch * BATCH)), str(expected)],
                            capture_output=True, text=True, timeout=600)
    return result.returncode, result.stdout, result.stderr


def test_no_damage_makes_the_reader_or_verify_crash_hang_or_lie(fuzz_db, tmp_path):
    db, expected = fuzz_db
    batches = -(-MUTATIONS // BATCH)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda b: _run(b, db, expected, tmp_path), range(batches)))
    outcomes = []
    for batch, (code, stdout, stderr) in enumerate(results):
        lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        assert code == 0, (f"batch {batch} died (exit {code}, a negative code is a signal) after mutation "
                           f"{lines[-1]['n'] if lines else 'none'}: {stderr[-2000:]}")
        outcomes += lines
    assert len(outcomes) == MUTATIONS
    lies = [o for o in outcomes if o["outcome"] != "clean"]
    assert not lies, lies[:5]
    detected = sum(not o["verify_ok"] for o in outcomes)
    assert detected > MUTATIONS // 10  # the damage reaches what is read (much lands in free space: harmless)
