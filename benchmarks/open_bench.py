"""Dataset construction time: LmdbImageNet on an N-record database vs ImageFolder scanning the same N files.

    python benchmarks/open_bench.py                 # N = 100,000 (1000 classes x 100)
    python benchmarks/open_bench.py --records 20000

The tree is N hard links to small real JPEGs (one per class) (ImageFolder only lists and stats, it reads nothing while
constructing); the database is converted from that tree. Median of ``--repeats`` constructions, each in a
fresh process (so nothing is cached in Python), with the file system's metadata warm.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from imagenet_pack import ConvertOptions, convert
from imagenet_pack.sources.synsets import builtin_names

TIMER = """
import sys, time
t = time.perf_counter()
if sys.argv[1] == "lmdb":
    from imagenet_pack import LmdbImageNet
    imported = time.perf_counter()
    n = len(LmdbImageNet(sys.argv[2], "train"))
else:
    from torchvision.datasets import ImageFolder
    imported = time.perf_counter()
    n = len(ImageFolder(sys.argv[2]))
print(time.perf_counter() - imported, n)
"""


def construct_seconds(kind: str, path: Path) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", TIMER, kind, str(path)], capture_output=True, text=True, check=True)
    seconds, n = out.stdout.split()
    return float(seconds), int(n)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="dataset size (default: 100000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="open-bench-") as tmp:
        tmp = Path(tmp)
        rgb = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
        jpeg = cv2.imencode(".jpg", rgb)[1].tobytes()
        wnids = sorted(builtin_names())
        per_class = -(-args.records // len(wnids))
        made = 0
        for wnid in wnids:
            folder = tmp / "src" / "train" / wnid
            folder.mkdir(parents=True)
            master = folder / f"{wnid}_0.JPEG"  # one file per class, linked: file systems cap links per inode
            master.write_bytes(jpeg)
            for k in range(1, min(per_class, args.records - made)):
                os.link(master, folder / f"{wnid}_{k}.JPEG")
            made += min(per_class, args.records - made)
            if made == args.records:
                break
        convert(tmp / "src", tmp / "db", ConvertOptions(splits=("train",), progress=False))
        construct_seconds("folder", tmp / "src" / "train")  # warm the directory cache for both
        folder = [construct_seconds("folder", tmp / "src" / "train") for _ in range(args.repeats)]
        lmdb = [construct_seconds("lmdb", tmp / "db") for _ in range(args.repeats)]
        assert folder[0][1] == lmdb[0][1] == args.records
        f, db = statistics.median(s for s, _ in folder), statistics.median(s for s, _ in lmdb)
        print(f"{args.records} samples, median of {args.repeats}, {os.cpu_count()} cores")
        print(f"ImageFolder(...)   {f * 1e3:9.1f} ms")
        print(f"LmdbImageNet(...)  {db * 1e3:9.1f} ms   {f / db:.0f}x faster")
        if args.json:
            args.json.write_text(json.dumps({"records": args.records, "results": [
                {"name": "baseline", "seconds": f, "ratio_to_baseline": 1.0},
                {"name": "lmdb-open", "seconds": db, "ratio_to_baseline": f / db}]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
