"""Scale: how opening, worker memory, the sampler and random reads behave as the record count N grows.

    python benchmarks/scale_bench.py                          # N = 10k, 100k, 1M, 4M
    python benchmarks/scale_bench.py --records 10000 100000 1000000 14000000 --json scale.json

Each database is written through the real shard writer (``ShardWriter``, the converter's final commit), with
one tiny JPEG repeated: the point is the record count, not pixels. For each N it measures, in fresh processes:

* open: constructing ``LmdbImageNet`` (metadata, per-record arrays mapped and checksummed), median of 5;
* worker memory, under fork, spawn and forkserver: a worker receives the dataset the way DataLoader sends it,
  reads 200 random records (what a loader worker does: each read checks the record's target against the
  metadata's with a two-byte read), and reports its Private_Dirty memory (pages only it can use) and the
  growth over the smallest N; then what touching ``ds.targets`` adds (a private copy of every class index,
  read on first access: what a process pays that asks for the whole array, as a class-balanced sampler does);
* pickle: the bytes a spawned worker receives;
* sampler: building one epoch's order for one of 8 ranks (time, and peak memory traced by tracemalloc);
* random reads: latency of ``read_record`` at random indices, page cache warm (median and 99th percentile).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
from common import machine

from imagenet_pack import ConvertOptions, EpochSampler, LmdbImageNet
from imagenet_pack.contract.format import Record, ShardMeta, encode_record
from imagenet_pack.sources.synsets import builtin_names, class_names
from imagenet_pack.write.state import Row
from imagenet_pack.write.writer import ShardWriter

OPEN_TIMER = """
import sys, time
from imagenet_pack import LmdbImageNet
t = time.perf_counter()
ds = LmdbImageNet(sys.argv[1], "train")
print(time.perf_counter() - t, len(ds))
"""


def write_database(root: Path, n: int, classes: int = 1000) -> float:
    """N records of one tiny JPEG through ShardWriter; returns seconds."""
    started = time.perf_counter()
    jpeg = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))[1].tobytes()
    values = [encode_record(Record(jpeg, target, 8, 8))[0] for target in range(classes)]  # one per class
    writer = ShardWriter(root / "train", "scale-bench", map_size=(len(values[0]) + 64) * n + (64 << 20),
                         batch_bytes=ConvertOptions().batch_bytes)
    for i in range(n):
        writer.add(i, values[i % classes], None, Row(i, 8, 8, None))
    writer.flush()
    wnids = sorted(builtin_names())[:classes]
    targets = np.arange(n) % classes
    sizes = np.full((n, 2), 8)
    meta = ShardMeta(split="train", shard=0, num_shards=1, count=n, items=n, wnids=tuple(wnids),
                     classes=tuple(class_names(wnids)), fingerprint="scale-bench",
                     created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    writer.finish(meta, [f"train/{i}.JPEG" for i in range(n)], targets, sizes, np.zeros((n, 2), np.int64))
    writer.close()
    return time.perf_counter() - started


def private_dirty_mb() -> float:
    """This process's Private_Dirty memory (Linux smaps_rollup), MB."""
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker_task(ds: LmdbImageNet) -> tuple[float, float]:
    """What a DataLoader worker does with the dataset, then its private memory; then after ``ds.targets``."""
    rng = np.random.default_rng(0)
    for i in rng.integers(0, len(ds), 200):
        ds.read_record(int(i))
    reads = private_dirty_mb()
    int(ds.targets.sum())
    return reads, private_dirty_mb()


def worker_memory(ds: LmdbImageNet, method: str) -> tuple[float, float]:
    with multiprocessing.get_context(method).Pool(1) as pool:
        return pool.apply(worker_task, (ds,))


def sampler_cost(n: int) -> tuple[float, float]:
    """Seconds and peak traced MB to build one epoch's order for rank 3 of 8."""
    sampler = EpochSampler(n, seed=0, rank=3, world_size=8)
    tracemalloc.start()
    started = time.perf_counter()
    share = sampler.indices(1)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert len(share) == len(sampler)
    return seconds, peak


def read_latency_us(ds: LmdbImageNet, reads: int = 20000) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    for i in rng.integers(0, len(ds), 2000):  # warm-up
        ds.read_record(int(i))
    times = []
    for i in rng.integers(0, len(ds), reads):
        t = time.perf_counter()
        ds.read_record(int(i))
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6


def measure(root: Path, n: int, repeats: int) -> dict:
    write_seconds = write_database(root, n)
    opens = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", OPEN_TIMER, str(root)], capture_output=True, text=True, check=True)
        opens.append(float(out.stdout.split()[0]))
    ds = LmdbImageNet(root, "train")
    measured = {method: worker_memory(ds, method) for method in ("fork", "spawn", "forkserver")}
    memory = {method: reads for method, (reads, _) in measured.items()}
    targets_mb = {method: with_targets - reads for method, (reads, with_targets) in measured.items()}
    sampler_s, sampler_mb = sampler_cost(n)
    p50, p99 = read_latency_us(ds)
    return {"records": n, "write_s": write_seconds, "db_mb": (root / "train" / "data.mdb").stat().st_size / 1e6,
            "open_ms": statistics.median(opens) * 1e3, "pickle_bytes": len(pickle.dumps(ds)),
            "worker_private_dirty_mb": memory, "targets_copy_mb": targets_mb, "sampler_s": sampler_s,
            "sampler_peak_mb": sampler_mb,
            "read_p50_us": p50, "read_p99_us": p99}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 4_000_000],
                        help="record counts to measure (default: 10k 100k 1M 4M)")
    parser.add_argument("--repeats", type=int, default=5, help="open timings per N (median)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the databases (default: a temp dir)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="scale-bench-", dir=args.dir))
    results = []
    try:
        for n in sorted(args.records):
            results.append(measure(base / f"n{n}", n, args.repeats))
            shutil.rmtree(base / f"n{n}")
            r = results[-1]
            print(f"  measured N={n}: open {r['open_ms']:.1f} ms, written in {r['write_s']:.0f} s", file=sys.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    first = results[0]["worker_private_dirty_mb"]
    print(f"{'records':>10} {'db MB':>8} {'open ms':>8} {'pickle B':>9} "
          f"{'worker private MB fork/spawn/forkserver':>40} "
          f"{'+ .targets MB':>14} {'sampler s':>10} {'sampler MB':>11} {'read p50/p99 us':>16}")
    for r in results:
        mem = r["worker_private_dirty_mb"]
        growth = " / ".join(f"{mem[m]:.0f} ({mem[m] - first[m]:+.1f})" for m in ("fork", "spawn", "forkserver"))
        print(f"{r['records']:>10} {r['db_mb']:>8.0f} {r['open_ms']:>8.1f} {r['pickle_bytes']:>9} {growth:>40} "
              f"{r['targets_copy_mb']['spawn']:>14.1f} {r['sampler_s']:>10.3f} {r['sampler_peak_mb']:>11.1f} "
              f"{r['read_p50_us']:>7.1f} / {r['read_p99_us']:<7.1f}")
    print("worker private MB: Private_Dirty of a worker after reading 200 random records (growth over the "
          "smallest N in brackets); + .targets: what touching ds.targets then adds (spawn); sampler: one epoch's "
          "order for rank 3 of 8")
    if args.json:
        args.json.write_text(json.dumps({**machine(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
