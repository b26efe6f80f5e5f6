"""Fuzzing the reader and verify over randomly damaged copies of a real database: whatever the damage (meta
pages, branch and leaf pages, overflow pages, free pages; single bytes, words, runs; the file cut short), and
whether it lands before a reader opens the database or under one that has it open, reading every record
gives the package's error or the right bytes, verify reports problems or the right database, and nothing
dies of a signal, raises anything else, or hangs.

Each batch of mutations runs in a subprocess (``fuzz_worker.py``), so a signal (SIGBUS, SIGSEGV) shows as a
failure naming the batch. IMAGENET_PACK_FUZZ_MUTATIONS sets how many mutations run (default 1200, about half
a minute on 2 cores); the longer run is ``IMAGENET_PACK_FUZZ_MUTATIONS=20000 pytest tests/test_fuzz.py``.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import opts

from imagenet_pack import convert
from imagenet_pack.synthetic import make_sample_tree

MUTATIONS = int(os.environ.get("IMAGENET_PACK_FUZZ_MUTATIONS", "1200"))
BATCH = 150

WORKER = Path(__file__).with_name("fuzz_worker.py")

pytestmark = pytest.mark.slow  # batches of mutations, each in a subprocess


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
    result = subprocess.run([sys.executable, str(WORKER), str(db), str(folder), str(batch * BATCH),
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
