"""Loader throughput, side by side in one run on the same images and cores, as ratios to the baseline.

Entries: ``baseline`` (ImageFolder + PIL + RandomResizedCrop/flip/ToTensor/Normalize), ``lmdb-dropin`` (the
same transforms on LmdbImageNet), ``lmdb-fused-train`` (RandomResizedCropDecoder, uint8), ``lmdb-fused-val``
(CenterCropDecoder, uint8), the same two with ``-nvimgcodec`` (nvImageCodec's CPU region decode, when
installed), ``limit-bare-decode`` (OpenCV full decode of the same bytes, nothing else), the fused decoders
on a database written with ``--max-side`` (default 256) and, when asked, ``--short-side``; ``-cold`` entries
evict the files from the page cache (``posix_fadvise(DONTNEED)``) before every round. Each entry also
reports the memory of its workers (private and shared resident MB, from /proc/PID/smaps_rollup).

    python benchmarks/loader_bench.py                       # generated ImageNet-like sample
    python benchmarks/loader_bench.py --images /data/imagenet-sample --json out.json

Each figure: median images/s of ``--epochs`` timed rounds after one warm-up round (worker start-up untimed);
a round runs one epoch of every entry in turn (interleaved, so that a slow spell on a shared machine hits
all entries alike); a ratio is the median of the per-round ratios. ``num_workers`` = cores, batch 32; fused
entries use ``build_loader``, the others a plain DataLoader.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torchvision
from common import source_tree, standard_train_transform, write_json
from torch.utils.data import Dataset

from imagenet_pack import CenterCropDecoder, ConvertOptions, LmdbImageNet, RandomResizedCropDecoder, convert
from imagenet_pack.bench.timing import measure, ratio
from imagenet_pack.contract.codec import DECODE_FLAGS
from imagenet_pack.machine import default_workers
from imagenet_pack.read.decoders import installed_backends
from imagenet_pack.read.nvcodec import AVAILABLE as NVIMGCODEC_AVAILABLE


class BareDecode(Dataset):
    """The limit: OpenCV decodes the stored bytes, nothing more (no crop, no tensor)."""

    def __init__(self, ds: LmdbImageNet):
        self.records = [ds.read_record(i).image for i in range(len(ds))]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        cv2.imdecode(np.frombuffer(self.records[i], np.uint8), DECODE_FLAGS)
        return 0, 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="flat folder of <wnid>_*.JPEG (default: generated sample)")
    parser.add_argument("--copies", type=int, default=3, help="copies of each --images file (default: 3)")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--epochs", type=int, default=5, help="timed rounds (default: 5)")
    parser.add_argument("--max-side", type=int, default=256, help="also bench a --max-side database (0: skip)")
    parser.add_argument("--short-side", type=int, default=0, help="also bench a --short-side database (default: skip)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="loader-bench-"))
    try:
        src = source_tree(args.images, tmp / "src", args.copies, reencode=False, sample_per_class=20)
        convert(src, tmp / "db", ConvertOptions(splits=("train",), progress=False))
        folder = torchvision.datasets.ImageFolder(str(src / "train"), transform=standard_train_transform())
        backends = installed_backends()
        entries = {"baseline": folder,
                   "lmdb-dropin": LmdbImageNet(tmp / "db", "train", transform=standard_train_transform())}
        for kind, make in (("train", lambda b: RandomResizedCropDecoder(224, backend=b)),
                           ("val", lambda b: CenterCropDecoder(224, backend=b))):
            for backend in backends:
                suffix = "" if backend == "opencv" else f"-{backend}"
                entries[f"lmdb-fused-{kind}{suffix}"] = LmdbImageNet(tmp / "db", "train", decoder=make(backend))
        entries["limit-bare-decode"] = BareDecode(LmdbImageNet(tmp / "db", "train"))
        for option, side in (("max-side", args.max_side), ("short-side", args.short_side)):
            if not side:
                continue
            store = tmp / option
            convert(src, store, ConvertOptions(splits=("train",), progress=False, **{option.replace("-", "_"): side}))
            for backend in backends:
                suffix = "" if backend == "opencv" else f"-{backend}"
                entries[f"{option}-{side}-fused-train{suffix}"] = LmdbImageNet(
                    store, "train", decoder=RandomResizedCropDecoder(224, backend=backend))
                entries[f"{option}-{side}-fused-val{suffix}"] = LmdbImageNet(
                    store, "train", decoder=CenterCropDecoder(224, backend=backend))
        source_files = [Path(p) for p, _ in folder.samples]
        db_files = sorted((tmp / "db").rglob("data.mdb"))
        cold = {"baseline-cold": (folder, source_files),
                "lmdb-fused-train-cold": (entries["lmdb-fused-train"], db_files)}  # separate loaders
        if NVIMGCODEC_AVAILABLE:
            cold["lmdb-fused-train-nvimgcodec-cold"] = (entries["lmdb-fused-train-nvimgcodec"], db_files)
        timed = {name: (ds, None) for name, ds in entries.items()}
        timed.update(cold)
        results = measure(timed, args.workers, args.epochs, 32)
        limit = next(r for r in results if r["name"] == "limit-bare-decode")
        for r in results:
            r["ratio_to_baseline"] = ratio(r, results[0])
            r["ratio_to_limit"] = ratio(r, limit)
        print(f"{len(folder)} images, {args.workers} workers, {os.cpu_count()} cores, batch 32, "
              f"median of {args.epochs} interleaved rounds")
        width = max(len(r["name"]) for r in results)
        print(f"{'entry':<{width}} {'images/s':>9} {'x baseline':>11} {'x limit':>8} {'worker MB private/shared':>25}")
        for r in results:
            print(f"{r['name']:<{width}} {r['images_per_s']:>9.0f} {r['ratio_to_baseline']:>11.2f} "
                  f"{r['ratio_to_limit']:>8.2f} "
                  f"{r['worker_private_mb']:>15.0f} / {r['worker_shared_mb']:<6.0f}")
        write_json(args.json, results, arguments={k: str(v) for k, v in vars(args).items()}, images=len(folder))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
