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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from imagenet_pack import ConvertOptions, CudaPrefetcher, LmdbImageNet, RandomResizedCropDecoder, convert
from imagenet_pack.gpu.decode import NVIMGCODEC_KINDS, GpuBatchDecoder
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


def run(model, optimizer, batches, steps: int, device: torch.device) -> tuple[float, float]:
    """images/s and data-wait fraction over ``steps`` steps after 3 warm-up steps. Data wait: the time the loop
    is blocked on ``next(batches)``; kernels queued before keep the GPU busy meanwhile."""
    amp = device.type == "cuda"
    seen, waited, start = 0, 0.0, None
    for step in range(steps + 3):
        if step == 3:
            if amp:
                torch.cuda.synchronize()
            seen, waited, start = 0, 0.0, time.perf_counter()
        t0 = time.perf_counter()
        images, targets = next(batches)
        waited += time.perf_counter() - t0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(targets)
    if amp:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return seen / elapsed, waited / elapsed


def forever(iterable_factory):
    while True:
        yield from iterable_factory()


def decode_benchmark(ds: LmdbImageNet, batch: int, size: int, device: torch.device) -> dict[str, float]:
    """images/s of GpuBatchDecoder on one in-memory batch, per decoder."""
    data, boxes, _ = ds.encoded_batch([(i % len(ds), 0) for i in range(batch)])
    boxes = torch.tensor(boxes, dtype=torch.int64)
    variants = {}
    if NVIMGCODEC_AVAILABLE:
        variants["nvimgcodec (all kinds)"] = dict(backend="nvimgcodec")
        if device.type == "cuda":
            variants.update({f"nvimgcodec {k}": dict(backend="nvimgcodec", kinds=(k,)) for k in NVIMGCODEC_KINDS})
    variants["torchvision.io.decode_jpeg"] = dict(backend="torchvision")
    rates = {}
    for name, kwargs in variants.items():
        try:
            decoder = GpuBatchDecoder(size, device, **kwargs)
            decoder(data, boxes)
            times = []
            for _ in range(5):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                decoder(data, boxes)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
            rates[name] = batch / statistics.median(times)
            print(f"  {name:<28} {rates[name]:9.0f} images/s   CPU fallbacks {decoder.fallbacks}")
        except Exception as exc:  # noqa: BLE001 - a decoder kind this GPU lacks: say so, go on
            print(f"  {name:<28} not available here ({type(exc).__name__}: {str(exc)[:120]})")
    return rates


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
    model = torchvision.models.get_model(args.arch, num_classes=1000).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    if cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 1000, (args.batch_size,), device=device)
    bound = run(model, optimizer, forever(lambda: [(images, targets)]), args.steps, device)[0]
    feeds = {"(a) CPU fused decode": 0.0, "(b) GPU decode mode": 1.0, "(c) hybrid, auto share": "auto"}
    for name, share in feeds.items():
        loader = build_loader(ds, args.batch_size, workers=args.workers, gpu_share=share, device=device)
        rate, wait = run(model, optimizer, forever(lambda: CudaPrefetcher(loader, device, channels_last=cuda)),
                         args.steps, device)
        print(f"  {name:<24} {rate:8.0f} images/s   {rate / bound:5.2f} of the bound   data wait {wait:4.0%}   "
              f"GPU share {loader.gpu_share:.2f}")
    print(f"  {'(d) synthetic on device':<24} {bound:8.0f} images/s    1.00 (the compute bound)")

    ok = True
    if not args.skip_resume:
        print("3. exact resume: tools/train.py stopped after 3 steps, resumed")
        ok = resume_check(db, device, Path(tmp.name) / "resume", "resnet18" if cuda else args.arch,
                          min(args.batch_size, 64), args.image_size, min(args.workers, 4))
    tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
