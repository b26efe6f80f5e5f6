"""One short check on a CUDA machine: ResNet-50, bf16, channels_last, batch 256, three ways of feeding it.

    python tools/gpu_check.py                 # generated ImageNet-like sample, all cores
    python tools/gpu_check.py --db DIR        # an existing imagenet-pack database

Prints training images/s for (a) the CPU fused-decode loader (all cores), (b) GPU decode mode (nvJPEG via
torchvision.io.decode_jpeg, crop/resize/flip on the GPU), (c) synthetic data already on the GPU (the compute
bound), and the fraction of step time spent waiting for data in (a) and (b). ``--device cpu`` with a small
model runs the same code paths without a GPU (the tests do).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader

from imagenet_pack import ConvertOptions, LmdbImageNet, RandomResizedCropDecoder, convert
from imagenet_pack.gpu import CudaPrefetcher, normalize
from imagenet_pack.gpu.decode import CropBoxDecoder, GpuBatchDecoder, collate_jpeg
from imagenet_pack.loader import default_workers
from imagenet_pack.loader.loader import build_loader, worker_init
from imagenet_pack.synthetic import make_sample_tree


def run(model, optimizer, batches, steps: int, device: torch.device) -> tuple[float, float]:
    """images/s and data-wait fraction over ``steps`` steps after 3 warm-up steps. Data wait: the time the loop
    is blocked on ``next(batches)``; kernels queued before keep the GPU busy meanwhile, so a loader that keeps
    up shows a wait near 0 and a starved GPU a wait near 1 - (images/s / compute bound)."""
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, help="existing database (default: convert a generated sample)")
    p.add_argument("--images", type=int, default=768, help="generated sample size (default: 768)")
    p.add_argument("--arch", default="resnet50", help="torchvision model (default: resnet50)")
    p.add_argument("--batch-size", type=int, default=256, help="default: 256")
    p.add_argument("--image-size", type=int, default=224, help="default: 224")
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode, after 3 warm-up steps (default: 20)")
    p.add_argument("--workers", type=int, default=default_workers(), help="loader workers (default: all cores)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu, to exercise the code without a GPU")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    tmp = tempfile.TemporaryDirectory(prefix="gpu-check-")
    db = args.db
    if db is None:
        src = make_sample_tree(Path(tmp.name) / "src", classes=16, train_per_class=max(1, args.images // 16),
                               val_per_class=1)
        db = Path(tmp.name) / "db"
        convert(src, db, ConvertOptions(splits=("train",), progress=False))
    model = torchvision.models.get_model(args.arch, num_classes=1000).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    print(f"{torch.cuda.get_device_name(device) if cuda else 'cpu'}, {args.workers} loader workers, {args.arch}, "
          f"batch {args.batch_size}, {args.image_size}px, {'bf16 channels_last' if cuda else 'fp32'}")

    cpu_decoder = RandomResizedCropDecoder(args.image_size, backend="auto")
    cpu_set = LmdbImageNet(db, "train", decoder=cpu_decoder)
    cpu_loader = build_loader(cpu_set, args.batch_size, workers=args.workers)
    a = run(model, optimizer, forever(lambda: CudaPrefetcher(cpu_loader, device, channels_last=cuda)),
            args.steps, device)
    print(f"(a) CPU fused decode     {a[0]:8.0f} images/s   data wait {a[1]:.0%}   ({cpu_decoder.backend} backend)")

    gpu_set = LmdbImageNet(db, "train", decoder=CropBoxDecoder())
    gpu_loader = DataLoader(gpu_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                            num_workers=args.workers, collate_fn=collate_jpeg, worker_init_fn=worker_init,
                            persistent_workers=args.workers > 0)
    decoder = GpuBatchDecoder(args.image_size, device)

    def gpu_batches():
        for data, boxes, targets in gpu_loader:
            images = normalize(decoder(data, boxes), channels_last=cuda)
            yield images, targets.to(device, non_blocking=True)

    b = run(model, optimizer, forever(gpu_batches), args.steps, device)
    print(f"(b) GPU decode (nvJPEG)  {b[0]:8.0f} images/s   data wait {b[1]:.0%}   CPU fallbacks {decoder.fallbacks}")

    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    if cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 1000, (args.batch_size,), device=device)
    c = run(model, optimizer, forever(lambda: [(images, targets)]), args.steps, device)
    print(f"(c) synthetic on device  {c[0]:8.0f} images/s   (compute bound)")
    print(f"(a)/(c) {a[0] / c[0]:.2f}   (b)/(c) {b[0] / c[0]:.2f}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
