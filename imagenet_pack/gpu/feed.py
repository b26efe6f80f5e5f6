"""The training feed, measured: how fast a model trains from each way of feeding it, against the compute bound.

:func:`feed_table` trains a torchvision model (bf16 autocast and channels_last on CUDA) for a few steps from
(a) the CPU fused loader, (b) GPU decode mode (every sample decoded on the device), (c) the hybrid feed with
an automatic share, and (d) synthetic batches already on the device (the compute bound), and reports images/s,
the fraction of the bound and the data wait. :func:`decode_benchmark` times GPU decode + crop + flip alone,
per decoder. Both run on a CPU device too (the tests do), where the figures mean little.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from ..loader.loader import build_loader
from ..read.pixels import NVIMGCODEC_AVAILABLE
from .decode import NVIMGCODEC_KINDS, GpuBatchDecoder
from .prefetch import CudaPrefetcher


def train_rate(model, optimizer, batches, steps: int, device: torch.device) -> tuple[float, float]:
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


def _forever(iterable_factory):
    while True:
        yield from iterable_factory()


def feed_table(dataset, *, arch: str = "resnet50", batch_size: int = 256, steps: int = 20, workers: int,
               device: torch.device | str = "cuda") -> list[dict]:
    """Train ``arch`` from each feed (see the module docstring) over ``dataset`` (fused decoder): a row each."""
    import torchvision
    device = torch.device(device)
    cuda = device.type == "cuda"
    size = dataset.batch_shape[1]
    model = torchvision.models.get_model(arch, num_classes=1000).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch_size, 3, size, size, device=device)
    if cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 1000, (batch_size,), device=device)
    bound = train_rate(model, optimizer, _forever(lambda: [(images, targets)]), steps, device)[0]
    rows = []
    for name, share in (("CPU fused decode", 0.0), ("GPU decode mode", 1.0), ("hybrid, auto share", "auto")):
        loader = build_loader(dataset, batch_size, workers=workers, gpu_share=share, device=device)
        rate, wait = train_rate(model, optimizer, _forever(lambda: CudaPrefetcher(loader, device, channels_last=cuda)),
                                steps, device)
        rows.append({"feed": name, "images_per_s": rate, "of_bound": rate / bound, "data_wait": wait,
                     "gpu_share": loader.gpu_share})
    rows.append({"feed": "synthetic on device (compute bound)", "images_per_s": bound, "of_bound": 1.0,
                 "data_wait": 0.0, "gpu_share": None})
    return rows


def decode_benchmark(ds, batch: int, size: int, device: torch.device) -> dict[str, float]:
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
