"""Converter throughput for 1, 2, ... workers, lossless vs --max-side, and the storage ratio, in one run.

    python benchmarks/convert_bench.py                                  # generated ImageNet-like sample
    python benchmarks/convert_bench.py --images /data/imagenet-sample --copies 8 --json out.json

Each figure is the median of ``--repeats`` conversions into a fresh directory (source files warm in the page
cache after an untimed warm-up conversion). Ratios are against 1 worker, lossless, from the same run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import source_tree, write_json

from imagenet_pack import ConvertOptions, convert
from imagenet_pack.machine import default_workers


def timed_convert(src: Path, dst: Path, options: ConvertOptions, repeats: int) -> tuple[float, object]:
    times, report = [], None
    for _ in range(repeats):
        shutil.rmtree(dst, ignore_errors=True)
        start = time.perf_counter()
        report = convert(src, dst, options)
        times.append(time.perf_counter() - start)
    return statistics.median(times), report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="flat folder of <wnid>_*.JPEG (default: generated sample)")
    parser.add_argument("--copies", type=int, default=8, help="files per --images file (default: 8)")
    parser.add_argument("--max-workers", type=int, default=default_workers())
    parser.add_argument("--max-side", type=int, default=256, help="also time a --max-side conversion (0: skip)")
    parser.add_argument("--short-side", type=int, default=256, help="also time a --short-side conversion (0: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="convert-bench-"))
    try:
        src = source_tree(args.images, tmp / "src", args.copies, reencode=True, sample_per_class=60)
        src_bytes = sum(p.stat().st_size for p in (src / "train").rglob("*") if p.is_file())
        count = sum(1 for p in (src / "train").rglob("*") if p.is_file())
        base = dict(splits=("train",), progress=False, overwrite=True)
        convert(src, tmp / "warm", ConvertOptions(**base, workers=1))  # page cache warm-up, untimed
        runs = [(f"lossless-{w}w", ConvertOptions(**base, workers=w)) for w in range(1, args.max_workers + 1)]
        if args.short_side:
            runs.append((f"short-side-{args.short_side}-{args.max_workers}w",
                         ConvertOptions(**base, workers=args.max_workers, short_side=args.short_side)))
        if args.max_side:
            runs.append((f"max-side-{args.max_side}-{args.max_workers}w",
                         ConvertOptions(**base, workers=args.max_workers, max_side=args.max_side)))
        results = []
        for name, options in runs:
            seconds, report = timed_convert(src, tmp / "db", options, args.repeats)
            split = report.splits[0]
            results.append({"name": name, "workers": options.workers, "seconds": seconds,
                            "images_per_s": count / seconds, "mb_per_s": src_bytes / 1e6 / seconds,
                            "storage_ratio": split.db_bytes / src_bytes})
            print(f"  measured {name}: {count / seconds:.0f} images/s", file=sys.stderr)
        for r in results:
            r["speedup_vs_1_worker"] = r["images_per_s"] / results[0]["images_per_s"]
        print(f"{count} images, {src_bytes / 1e6:.0f} MB, {os.cpu_count()} cores, median of {args.repeats}")
        print(f"{'run':<22} {'images/s':>9} {'MB/s':>7} {'x 1 worker':>11} {'db/src':>7}")
        for r in results:
            print(f"{r['name']:<22} {r['images_per_s']:>9.0f} {r['mb_per_s']:>7.1f} "
                  f"{r['speedup_vs_1_worker']:>11.2f} {r['storage_ratio']:>7.3f}")
        write_json(args.json, results, arguments={k: str(v) for k, v in vars(args).items()}, images=count,
                   source_bytes=src_bytes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
