"""One short check on a CUDA machine: GPU decode speed and pixels, the training feeds, exact resume, ranks.

    python tools/gpu_check.py --images .sample --count 8192                 # real JPEGs, replicated
    python tools/gpu_check.py --images .sample --count 8192 --short-side 256
    python tools/gpu_check.py --device cpu --arch resnet18 ...              # the same code without a GPU

1. Decode micro-benchmark: GPU decode + RandomResizedCrop + flip to uint8, one batch of ``--batch-size``
   records, for each nvImageCodec decoder kind present (hardware engine, CUDA, hybrid; all together) and the
   torchvision fallback: images/s (median of 5 after a warm-up) and the pixel error against the CPU fused
   decoder on the same records and plans (mean, and each edge row and column).
2. The hybrid loader (every sample on the device, and half) through ``CudaPrefetcher`` against the CPU-only
   loader: same targets, pixel error.
3. Training feed, ResNet-50 bf16 channels_last (``--arch``): synthetic batches on the device (the compute
   bound), CPU fused loader, GPU decode mode, hybrid (``gpu_share="auto"``): images/s, fraction of the
   bound, data wait; the timed steps under ``torch.cuda.set_sync_debug_mode("error")``.
4. Exact resume: ``tools/train.py --log-samples`` stopped after 3 steps and resumed, with the CPU feed,
   ``--gpu-share 0.5`` and ``auto``: every sample of the epoch logged once, in the epoch's order.
5. Ranks: with two or more GPUs, two processes each decoding on its own device (else says so).

``--images DIR`` takes real JPEGs (a flat folder of ``<wnid>_*.JPEG``, or class folders), copied to
``--count`` files; without it a generated ImageNet-like sample of ``--count`` images is used.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from imagenet_pack import ConvertOptions, CudaPrefetcher, LmdbImageNet, RandomResizedCropDecoder, build_loader, convert
from imagenet_pack.bench.feed import decode_benchmark, edge_errors, feed_table
from imagenet_pack.machine import default_workers
from imagenet_pack.read.pixels import NVIMGCODEC_AVAILABLE
from imagenet_pack.synthetic import make_sample_tree

TRAIN = Path(__file__).resolve().parent / "train.py"


def source_tree(images: Path | None, out: Path, count: int) -> Path:
    """``out/train/<wnid>/`` and one val image per class: ``images`` copied round-robin to ``count`` files, or
    a generated sample."""
    if images is None:
        return make_sample_tree(out, classes=16, train_per_class=max(1, count // 16), val_per_class=1)
    files = sorted(images.rglob("*.JPEG")) + sorted(images.rglob("*.jpg"))
    if not files:
        raise SystemExit(f"{images}: no JPEG files")
    for k in range(count):
        f = files[k % len(files)]
        wnid = f.parent.name if f.parent != images else f.name.split("_")[0]
        for split, name in (("train", f"{k}_{f.name}"), ("val", f.name)):
            folder = out / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            if split == "train" or not (folder / name).exists():
                shutil.copyfile(f, folder / name)
    return out


def hybrid_against_cpu(db: Path, device: torch.device, batch: int, size: int, workers: int) -> bool:
    """The hybrid loader through CudaPrefetcher (share 1.0 and 0.5) against the CPU-only loader, 4 batches."""
    ok = True

    def first(loader, n=4):
        out = []
        for k, (x, y) in enumerate(CudaPrefetcher(loader, device, dtype=torch.float32)):
            out.append((x.cpu(), y.cpu()))
            if k + 1 == n:
                break
        return out

    ds = LmdbImageNet(db, "train", decoder=RandomResizedCropDecoder(size, backend="opencv", seed=3))
    reference = first(build_loader(ds, batch, workers=workers, seed=7))
    for share in (1.0, 0.5):
        got = first(build_loader(ds, batch, workers=workers, seed=7, gpu_share=share, device=device))
        same = all(torch.equal(a[1], b[1]) for a, b in zip(reference, got))
        scale = 255 * 0.226  # normalised -> levels of 255
        errors = edge_errors(torch.cat([x for x, _ in got]) * scale, torch.cat([x for x, _ in reference]) * scale)
        print(f"  share {share}: targets {'equal' if same else 'DIFFER'}; "
              + ", ".join(f"{k} {v:.2f}" for k, v in errors.items()) + " levels")
        ok &= same and errors["mean"] <= 1.5 and max(v for k, v in errors.items() if k != "mean") <= 3.0
    return ok


def resume_check(db: Path, device: torch.device, out: Path, arch: str, batch: int, size: int, workers: int,
                 share: str) -> bool:
    """tools/train.py preempted after 3 steps and resumed: every sample of epoch 0 once, in the epoch's order."""
    args = [sys.executable, str(TRAIN), str(db), "--arch", arch, "--epochs", "1", "--batch-size", str(batch),
            "--image-size", str(size), "--workers", str(workers), "--device", device.type, "--output", str(out),
            "--log-samples", "--gpu-share", share]
    for extra in (["--exit-after-steps", "3"], ["--resume"]):
        result = subprocess.run(args + extra, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            print(result.stderr[-2000:])
            return False
    logged = [json.loads(line) for line in (out / "samples-rank0.jsonl").read_text().splitlines()]
    seen = [i for entry in logged if entry["epoch"] == 0 for i in entry["indices"]]
    order = build_loader(LmdbImageNet(db, "train"), batch, workers=0).sampler.order(0)
    expected = order[:len(order) // batch * batch].tolist()
    ok = seen == expected
    print(f"  --gpu-share {share}: {len(logged)} steps, {len(seen)} samples: "
          + ("each once, in the epoch's order" if ok else "NOT the epoch's order (repeats or gaps)"))
    return ok


def ranks_check(db: Path, out: Path, size: int) -> bool:
    """Two ranks (torchrun) each decoding on its own GPU; skipped with fewer than two GPUs."""
    if torch.cuda.device_count() < 2:
        print(f"  {torch.cuda.device_count()} GPU(s) here: the two-rank check needs two, skipped")
        return True
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(TRAIN), str(db), "--arch", "resnet18",
           "--epochs", "1", "--batch-size", "64", "--image-size", str(size), "--workers", "2", "--gpu-share", "1.0",
           "--max-steps", "3", "--output", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    print(f"  two ranks, GPU decode on each rank's own device: exit {result.returncode}")
    return result.returncode == 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, help="existing database (default: convert --images or a generated sample)")
    p.add_argument("--images", type=Path, help="real JPEGs to use (flat <wnid>_*.JPEG or class folders)")
    p.add_argument("--count", type=int, default=8192, help="train images (--images replicated) (default: 8192)")
    p.add_argument("--short-side", type=int, default=None, help="convert with --short-side (default: lossless)")
    p.add_argument("--arch", default="resnet50", help="torchvision model (default: resnet50)")
    p.add_argument("--batch-size", type=int, default=256, help="default: 256")
    p.add_argument("--image-size", type=int, default=224, help="default: 224")
    p.add_argument("--steps", type=int, default=20, help="timed steps per feed, after 3 warm-up steps (default: 20)")
    p.add_argument("--workers", type=int, default=default_workers(), help="loader workers (default: all cores)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu, to exercise the code without a GPU")
    p.add_argument("--skip-resume", action="store_true", help="leave out the kill/resume and rank checks")
    p.add_argument("--resume-shares", default="0,0.5,auto",
                   help="the --gpu-share values the resume check runs with (default: 0,0.5,auto)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    tmp = tempfile.TemporaryDirectory(prefix="gpu-check-")
    db = args.db
    if db is None:
        src = source_tree(args.images, Path(tmp.name) / "src", args.count)
        db = Path(tmp.name) / "db"
        convert(src, db, ConvertOptions(progress=False, short_side=args.short_side))
    print(f"{torch.cuda.get_device_name(device) if cuda else 'cpu'}, {args.workers} loader workers, torch "
          f"{torch.__version__}, CUDA {torch.version.cuda}, nvImageCodec "
          f"{'installed' if NVIMGCODEC_AVAILABLE else 'absent'}; {args.arch}, batch {args.batch_size}, "
          f"{args.image_size}px, {'bf16 channels_last' if cuda else 'fp32'}", flush=True)
    ds = LmdbImageNet(db, "train", decoder=RandomResizedCropDecoder(args.image_size, backend="auto"))
    ok = True
    print(f"1. decode micro-benchmark: GPU decode + RandomResizedCrop + flip, one batch of {args.batch_size}")
    for name, row in decode_benchmark(ds, args.batch_size, device).items():
        if "error" in row:
            print(f"  {name:<28} not available here ({row['error']})")
            continue
        edges = max(row[k] for k in ("top row", "bottom row", "left column", "right column"))
        print(f"  {name:<28} {row['images_per_s']:9.0f} images/s   CPU fallbacks {row['fallbacks']}   error vs CPU "
              f"fused: mean {row['mean']:.2f}, worst edge {edges:.2f} levels", flush=True)
        ok &= row["mean"] <= 1.0 and edges <= 3.0
    print("2. hybrid loader through CudaPrefetcher against the CPU-only loader")
    ok &= hybrid_against_cpu(db, device, min(args.batch_size, 64), args.image_size, min(args.workers, 4))
    print(f"3. training feed ({len(ds)} records{', steady state under sync debug mode error' if cuda else ''})")
    for row in feed_table(ds, arch=args.arch, batch_size=args.batch_size, steps=args.steps, workers=args.workers,
                          device=device, sync_debug=cuda):
        share = f"   GPU share {row['gpu_share']:.2f}" if row["gpu_share"] is not None else ""
        print(f"  {row['feed']:<36} {row['images_per_s']:8.0f} images/s   {row['of_bound']:5.2f} of the bound   "
              f"data wait {row['data_wait']:4.0%}{share}", flush=True)
    if not args.skip_resume:
        print("4. exact resume: tools/train.py stopped after 3 steps, resumed")
        for share in args.resume_shares.split(","):
            ok &= resume_check(db, device, Path(tmp.name) / f"resume-{share}", "resnet18" if cuda else args.arch,
                               min(args.batch_size, 64), args.image_size, min(args.workers, 4), share)
        print("5. ranks")
        ok &= ranks_check(db, Path(tmp.name) / "ranks", args.image_size)
    tmp.cleanup()
    print("gpu check: " + ("every check holds" if ok else "SOME CHECKS FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
