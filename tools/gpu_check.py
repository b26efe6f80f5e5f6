"""One short check on a CUDA machine: the decode micro-benchmark, the training-feed table, exact resume.

    python tools/gpu_check.py --images /data/imagenet-sample --count 8192    # real JPEGs, replicated
    python tools/gpu_check.py --db DIR                                       # an existing database
    python tools/gpu_check.py --device cpu --arch resnet18 ...               # the same code without a GPU

1. Decode micro-benchmark: GPU decode + RandomResizedCrop + flip to uint8, one batch of ``--batch-size``
   records, for each nvImageCodec decoder kind present (hardware engine, CUDA, hybrid; all together) and the
   torchvision fallback: images/s (median of 5 after a warm-up), decode only.
2. Training feed, ResNet-50 bf16 channels_last (``--arch``): (a) CPU fused loader (all cores), (b) GPU decode
   mode (every sample decoded on the device), (c) hybrid (``gpu_share="auto"``), (d) synthetic batches
   already on the device (the compute bound): images/s, fraction of the bound, data wait.
3. Exact resume: ``tools/train.py --log-samples`` stopped after 3 steps and resumed, on this device: every
   sample of the epoch logged once, in the epoch's order.

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

from imagenet_pack import ConvertOptions, LmdbImageNet, RandomResizedCropDecoder, convert
from imagenet_pack.gpu.feed import decode_benchmark, feed_table
from imagenet_pack.loader import build_loader, default_workers
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


def resume_check(db: Path, device: torch.device, out: Path, arch: str, batch: int, size: int, workers: int) -> bool:
    """tools/train.py preempted after 3 steps and resumed: every sample of epoch 0 once, in the epoch's order."""
    args = [sys.executable, str(TRAIN), str(db), "--arch", arch, "--epochs", "1", "--batch-size", str(batch),
            "--image-size", str(size), "--workers", str(workers), "--device", device.type, "--output", str(out),
            "--log-samples"]
    for extra in (["--exit-after-steps", "3"], ["--resume"]):
        result = subprocess.run(args + extra, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            print(result.stderr[-2000:])
            return False
    logged = [json.loads(line) for line in (out / "samples-rank0.jsonl").read_text().splitlines()]
    seen = [i for entry in logged if entry["epoch"] == 0 for i in entry["indices"]]
    ds = LmdbImageNet(db, "train")
    order = build_loader(ds, batch, workers=0).sampler.order(0)[:len(seen)].tolist()
    ok = seen == order and len(set(seen)) == len(seen)
    print(f"  {len(logged)} steps logged, {len(seen)} samples: "
          + ("each once, in the epoch's order" if ok else "NOT the epoch's order (repeats or gaps)"))
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, help="existing database (default: convert --images or a generated sample)")
    p.add_argument("--images", type=Path, help="real JPEGs to use (flat <wnid>_*.JPEG or class folders)")
    p.add_argument("--count", type=int, default=8192, help="train images (--images replicated) (default: 8192)")
    p.add_argument("--max-side", type=int, default=None, help="convert with --max-side (default: lossless)")
    p.add_argument("--arch", default="resnet50", help="torchvision model (default: resnet50)")
    p.add_argument("--batch-size", type=int, default=256, help="default: 256")
    p.add_argument("--image-size", type=int, default=224, help="default: 224")
    p.add_argument("--steps", type=int, default=20, help="timed steps per feed, after 3 warm-up steps (default: 20)")
    p.add_argument("--workers", type=int, default=default_workers(), help="loader workers (default: all cores)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu, to exercise the code without a GPU")
    p.add_argument("--skip-resume", action="store_true", help="leave out the kill/resume check")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    tmp = tempfile.TemporaryDirectory(prefix="gpu-check-")
    db = args.db
    if db is None:
        src = source_tree(args.images, Path(tmp.name) / "src", args.count)
        db = Path(tmp.name) / "db"
        convert(src, db, ConvertOptions(progress=False, max_side=args.max_side))
    print(f"{torch.cuda.get_device_name(device) if cuda else 'cpu'}, {args.workers} loader workers, torch "
          f"{torch.__version__}, CUDA {torch.version.cuda}, nvImageCodec "
          f"{'installed' if NVIMGCODEC_AVAILABLE else 'absent'}; {args.arch}, batch {args.batch_size}, "
          f"{args.image_size}px, {'bf16 channels_last' if cuda else 'fp32'}")
    ds = LmdbImageNet(db, "train", decoder=RandomResizedCropDecoder(args.image_size, backend="auto"))
    print(f"1. decode micro-benchmark: GPU decode + RandomResizedCrop + flip, one batch of {args.batch_size}")
    decode_benchmark(ds, args.batch_size, args.image_size, device)

    print(f"2. training feed ({len(ds)} records)")
    for row in feed_table(ds, arch=args.arch, batch_size=args.batch_size, steps=args.steps, workers=args.workers,
                          device=device):
        share = f"   GPU share {row['gpu_share']:.2f}" if row["gpu_share"] is not None else ""
        print(f"  {row['feed']:<36} {row['images_per_s']:8.0f} images/s   {row['of_bound']:5.2f} of the bound   "
              f"data wait {row['data_wait']:4.0%}{share}")

    ok = True
    if not args.skip_resume:
        print("3. exact resume: tools/train.py stopped after 3 steps, resumed")
        ok = resume_check(db, device, Path(tmp.name) / "resume", "resnet18" if cuda else args.arch,
                          min(args.batch_size, 64), args.image_size, min(args.workers, 4))
    tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
