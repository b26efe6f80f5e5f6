"""The training feed, measured: how fast a model trains from each way of feeding it, against the compute bound.

:func:`feed_table` trains a torchvision model (bf16 autocast and channels_last on CUDA) for a few steps from
(a) synthetic batches already on the device (the compute bound), (b) the CPU fused loader, (c) GPU decode
mode (every sample decoded on the device), (d) the hybrid feed with an automatic share, and reports
images/s, the fraction of the bound and the data wait; with ``sync_debug`` the timed steps run under
``torch.cuda.set_sync_debug_mode("error")``, so any host synchronisation in the feed is an error.
:func:`decode_benchmark` times GPU decode + crop + flip alone, per decoder, and compares its pixels with the
CPU fused decoder's on the same records and plans. Both run on a CPU device too (the tests do), where the
figures mean little.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Iterator

import torch
import torch.nn.functional as F

from ..gpu.decode import NVIMGCODEC_KINDS, GpuBatchDecoder
from ..gpu.prefetch import CudaPrefetcher
from ..gpu.stage import resolve_device
from ..loading import build_loader
from ..read.pixels import NVIMGCODEC_AVAILABLE

WARMUP = 3


def _sync_debug(enabled: bool):
    if not enabled:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def errors():
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return errors()


def train_rate(model, optimizer, batches: Iterator, steps: int, device: torch.device,
               sync_debug: bool = False) -> tuple[float, float]:
    """images/s and data-wait fraction over ``steps`` steps after :data:`WARMUP` warm-up steps, all from one
    pass of ``batches`` (no epoch restart inside the window). Data wait: the time the loop is blocked on
    ``next(batches)``; kernels queued before keep the GPU busy meanwhile."""
    amp = device.type == "cuda"
    seen, waited, start = 0, 0.0, 0.0
    for step in range(steps + WARMUP):
        if step == WARMUP:
            if amp:
                torch.cuda.synchronize(device)
            seen, waited, start = 0, 0.0, time.perf_counter()
        with _sync_debug(sync_debug and amp and step >= WARMUP):
            t0 = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - t0
            if batch is None:
                raise ValueError(f"the epoch ended inside the timed window of {steps} steps after {WARMUP} warm-up "
                                 "steps: use a larger database or fewer steps")
            images, targets = batch
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seen += len(targets)
    if amp:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return seen / elapsed, waited / elapsed


def feed_table(dataset, *, arch: str = "resnet50", batch_size: int = 256, steps: int = 20, workers: int,
               device: torch.device | str = "cuda", sync_debug: bool = False) -> list[dict]:
    """Train ``arch`` from each feed (see the module docstring) over ``dataset`` (fused decoder): a row each."""
    import torchvision
    device = resolve_device(device)
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
    synthetic = iter([(images, targets)] * (steps + WARMUP))
    bound = train_rate(model, optimizer, synthetic, steps, device, sync_debug)[0]
    rows = [{"feed": "synthetic on device (compute bound)", "images_per_s": bound, "of_bound": 1.0,
             "data_wait": 0.0, "gpu_share": None}]
    for name, share in (("CPU fused decode", 0.0), ("GPU decode mode", 1.0), ("hybrid, auto share", "auto")):
        loader = build_loader(dataset, batch_size, workers=workers, gpu_share=share, device=device)
        if len(loader) < steps + WARMUP:
            raise ValueError(f"{len(dataset)} records make {len(loader)} batches of {batch_size}: fewer than the "
                             f"{steps + WARMUP} steps of a window; use a larger database")
        batches = iter(CudaPrefetcher(loader, device, channels_last=cuda))
        rate, wait = train_rate(model, optimizer, batches, steps, device, sync_debug)
        rows.append({"feed": name, "images_per_s": rate, "of_bound": rate / bound, "data_wait": wait,
                     "gpu_share": getattr(loader, "gpu_share", 0.0)})
    return rows


def edge_errors(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean absolute difference of two uint8 (N, 3, H, W) batches, overall and on each edge row and column."""
    d = (a.float() - b.float()).abs()
    return {"mean": d.mean().item(), "top row": d[:, :, 0, :].mean().item(), "bottom row": d[:, :, -1, :].mean().item(),
            "left column": d[:, :, :, 0].mean().item(), "right column": d[:, :, :, -1].mean().item()}


def decode_benchmark(ds, batch: int, device: torch.device | str) -> dict[str, dict]:
    """Per decoder: images/s of GpuBatchDecoder on one in-memory batch (median of 5 after a warm-up), and its
    pixels against the CPU fused decoder's on the same records and plans (:func:`edge_errors`)."""
    device = resolve_device(device)
    items = [(i % len(ds), 0) for i in range(batch)]
    records, plans, wheres = ds.encoded_batch(items)
    reference = torch.stack([ds[item][0] for item in items])
    variants = {}
    if NVIMGCODEC_AVAILABLE:
        variants["nvimgcodec (all kinds)"] = dict(backend="nvimgcodec")
        if device.type == "cuda":
            variants.update({f"nvimgcodec {k}": dict(backend="nvimgcodec", kinds=(k,)) for k in NVIMGCODEC_KINDS})
    variants["torchvision.io.decode_jpeg"] = dict(backend="torchvision")
    out = {}
    for name, kwargs in variants.items():
        try:
            decoder = GpuBatchDecoder(ds.batch_shape[1], device, **kwargs)
            first = decoder(records, plans, wheres)
            fallbacks = decoder.fallbacks
            times = []
            for _ in range(5):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                decoder(records, plans, wheres)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
            out[name] = {"images_per_s": batch / statistics.median(times), "fallbacks": fallbacks,
                         **edge_errors(first.cpu(), reference)}
        except Exception as exc:  # noqa: BLE001 - a decoder kind this GPU lacks: say so, go on
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    return out
