"""The training feed, measured: how fast a model trains from each way of feeding it, against the compute bound.

:func:`feed_table` trains a torchvision model (bf16 autocast and channels_last on CUDA) for a few steps from
(a) synthetic batches already on the device (the compute bound), (b) the CPU fused loader, (c) GPU decode
mode (every sample decoded on the device), (d) the hybrid feed with an automatic share, and reports
images/s, the fraction of the bound and the data wait; :func:`train_from_feed` also runs the "pipeline" feed
(GPU decode mode with no model: the data path alone, and its peak device memory). With ``sync_debug="error"``
the timed steps run under CUDA's sync debug mode, so any host synchronisation in the feed is an error.
:func:`decode_benchmark` times GPU decode + crop + flip alone, per decoder, and compares its pixels with the
CPU fused decoder's on the same records and plans. Both run on a CPU device too (the tests do), where the
figures mean little.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ..feeds import build_loader
from ..gpu.decode import GpuBatchDecoder
from ..gpu.device import StageClock, is_cuda, peak_memory, resolve_device, synchronize, track_peak_memory
from ..gpu.device import sync_debug as sync_debug_mode
from ..gpu.prefetch import CudaPrefetcher
from ..read import nvcodec
from ..read.staged import StagedRecords

WARMUP = 3


def train_rate(model, optimizer, batches: Iterator, steps: int, device: torch.device,
               sync_debug: str = "off") -> tuple[float, float]:
    """images/s and data-wait fraction over ``steps`` steps after :data:`WARMUP` warm-up steps, all from one
    pass of ``batches`` (no epoch restart inside the window); with ``model`` None, no training (the feed
    alone). Data wait: the time the loop is blocked on ``next(batches)``; kernels queued before keep the GPU
    busy meanwhile. ``sync_debug``: what a host wait inside the timed steps does ("error", "warn", "off")."""
    amp = is_cuda(device)
    seen, waited, start = 0, 0.0, 0.0
    for step in range(steps + WARMUP):
        if step == WARMUP:
            synchronize(device)
            seen, waited, start = 0, 0.0, time.perf_counter()
        with sync_debug_mode(device, sync_debug if step >= WARMUP else "off"):
            t0 = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - t0
            if batch is None:
                raise ValueError(f"the epoch ended inside the timed window of {steps} steps after {WARMUP} warm-up "
                                 "steps: use a larger database or fewer steps")
            images, targets = batch
            if model is not None:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = F.cross_entropy(model(images), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        seen += len(targets)
    synchronize(device)
    elapsed = time.perf_counter() - start
    return seen / elapsed, waited / elapsed


# name -> gpu_share (None: synthetic batches on the device); "pipeline" is GPU decode mode with no model
FEEDS = {"synthetic": None, "cpu": 0.0, "gpu": 1.0, "hybrid": "auto", "pipeline": 1.0}
FEED_NAMES = {"synthetic": "synthetic on device (compute bound)", "cpu": "CPU fused decode",
              "gpu": "GPU decode mode", "hybrid": "hybrid, auto share", "pipeline": "GPU decode mode, no model"}
TRAINING_FEEDS = ("synthetic", "cpu", "gpu", "hybrid")


def train_from_feed(dataset, feed: str, *, arch: str = "resnet50", batch_size: int = 256, steps: int = 20,
                    workers: int, device: torch.device | str = "cuda", sync_debug: str = "off",
                    share: float | str | None = None) -> dict:
    """Train ``arch`` from one feed of :data:`FEEDS` over ``dataset`` (fused decoder): images/s, data wait, the
    share the feed ended with, the peak device memory (the data path's alone for "pipeline"). ``share``
    replaces the feed's own (the hybrid's "auto")."""
    import torchvision
    device = resolve_device(device)
    cuda = is_cuda(device)
    gpu_share = FEEDS[feed] if share is None else share
    name = f"hybrid, share {gpu_share}" if feed == "hybrid" and gpu_share != "auto" else FEED_NAMES[feed]
    model = optimizer = None
    if feed != "pipeline":
        model = torchvision.models.get_model(arch, num_classes=1000).to(device)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if gpu_share is None:
        size = dataset.batch_shape[1]
        images = torch.randn(batch_size, 3, size, size, device=device)
        images = images.contiguous(memory_format=torch.channels_last) if cuda else images
        targets = torch.randint(0, 1000, (batch_size,), device=device)
        rate, wait = train_rate(model, optimizer, iter([(images, targets)] * (steps + WARMUP)), steps, device,
                                sync_debug)
        return {"feed": name, "images_per_s": rate, "data_wait": wait, "gpu_share": None, "peak_bytes": None}
    loader = build_loader(dataset, batch_size, workers=workers, gpu_share=gpu_share, device=device)
    if len(loader) < steps + WARMUP:
        raise ValueError(f"{len(dataset)} records make {len(loader)} batches of {batch_size}: fewer than the "
                         f"{steps + WARMUP} steps of a window; use a larger database")
    track_peak_memory(device)
    batches = CudaPrefetcher(loader, device, channels_last=cuda).batches()
    rate, wait = train_rate(model, optimizer, batches, steps, device, sync_debug)
    batches.close()
    return {"feed": name, "images_per_s": rate, "data_wait": wait, "gpu_share": loader.gpu_share,
            "peak_bytes": peak_memory(device)}


def feed_table(dataset, *, arch: str = "resnet50", batch_size: int = 256, steps: int = 20, workers: int,
               device: torch.device | str = "cuda", sync_debug: str = "off") -> list[dict]:
    """Train ``arch`` from each of :data:`TRAINING_FEEDS` over ``dataset``: a row each, the synthetic bound
    first and every row's fraction of it."""
    rows = [train_from_feed(dataset, feed, arch=arch, batch_size=batch_size, steps=steps, workers=workers,
                            device=device, sync_debug=sync_debug) for feed in TRAINING_FEEDS]
    return [{**row, "of_bound": row["images_per_s"] / rows[0]["images_per_s"]} for row in rows]


def edge_errors(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean absolute difference of two uint8 (N, 3, H, W) batches, overall and on each edge row and column."""
    d = (a.float() - b.float()).abs()
    return {"mean": d.mean().item(), "top row": d[:, :, 0, :].mean().item(), "bottom row": d[:, :, -1, :].mean().item(),
            "left column": d[:, :, :, 0].mean().item(), "right column": d[:, :, :, -1].mean().item()}


def stage_batch(ds, items: list) -> tuple[StagedRecords, torch.Tensor]:
    """``items`` of ``ds`` staged in this process's memory as the workers stage them, and a batch holding the
    rows decoded here instead (none unless some record is too large to stage)."""
    staged = StagedRecords.allocate(len(items))
    side = ds.batch_shape[1]
    images = torch.zeros((len(items), side, side, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    ds.stage_records(items, staged, images)
    return staged, images


def decode_benchmark(ds, batch: int, device: torch.device | str) -> dict[str, dict]:
    """Per decoder: images/s of GpuBatchDecoder on one staged batch (median of 5 after a warm-up; once on a CPU
    device), the images it gave to OpenCV, and its pixels against the CPU fused decoder's on the same records
    and plans (:func:`edge_errors`)."""
    device = resolve_device(device)
    items = [(i % len(ds), 0) for i in range(batch)]
    staged, _ = stage_batch(ds, items)
    reference = torch.stack([ds[item][0] for item in items])
    variants: dict[str, dict[str, Any]] = {}
    if nvcodec.AVAILABLE:
        variants["nvimgcodec (engine, then hybrid)"] = dict(backend="nvimgcodec")
        if is_cuda(device):
            variants.update({f"nvimgcodec {k} only": dict(backend="nvimgcodec", kinds=(k,)) for k in nvcodec.KINDS})
            variants["nvimgcodec, GPU Huffman for all"] = dict(
                backend="nvimgcodec", options="nvjpeg_cuda_decoder:hybrid_huffman_threshold=0")
    variants["torchvision.io.decode_jpeg"] = dict(backend="torchvision")
    out: dict[str, dict[str, Any]] = {}
    for name, kwargs in variants.items():
        try:
            decoder = GpuBatchDecoder(ds.batch_shape[1], device, batch_size=batch, **kwargs)
            first = decoder(staged)
            fallbacks = decoder.fallbacks
            times = []
            for _ in range(5 if is_cuda(device) else 1):  # the interpreter's figures mean little: once
                synchronize(device)
                t0 = time.perf_counter()
                decoder(staged)
                synchronize(device)
                times.append(time.perf_counter() - t0)
            out[name] = {"images_per_s": batch / statistics.median(times), "fallbacks": fallbacks,
                         "regions": decoder.regions, **edge_errors(first.cpu(), reference)}
        except Exception as exc:  # noqa: BLE001 - a decoder kind this GPU lacks: say so, go on
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    return out


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def device_path_cost(loader, batches: int = 3) -> dict:
    """What the device path of a hybrid ``loader`` costs per batch, over ``batches`` batches made by its
    workers: torch operations, host milliseconds, on CUDA the CUDA runtime calls and host-to-device copies
    from pageable memory the profiler saw (a pageable copy makes the host wait), and each stage's milliseconds
    (``stages``: CUDA events on a GPU, wall time on a CPU device)."""
    device = loader.device
    staged = []
    clock = StageClock(device)
    loader.time_stages(clock)
    for batch in loader.batches():
        staged.append(batch)
        if len(staged) == batches:
            break
    counter = _CountOps()
    with counter:
        loader.to_device(staged[0], device)
    started = time.perf_counter()
    runtime = pageable = 0.0
    if is_cuda(device):  # the profiler's view of the CUDA runtime (there is none to see on a CPU device)
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as profile:
            for batch in staged:
                loader.to_device(batch, device)
            synchronize(device)
        events = profile.events()
        runtime = sum(1 for e in events if e.name.startswith("cuda") and e.device_type == torch.autograd.DeviceType.CPU)
        pageable = sum(1 for e in events if "Pageable" in e.name)
    else:
        for batch in staged:
            loader.to_device(batch, device)
    host_ms = (time.perf_counter() - started) * 1000 / len(staged)
    runtime, pageable = runtime / len(staged), pageable / len(staged)
    stages = {name: seconds * 1000 for name, seconds in clock.per_call().items()}
    loader.time_stages(None)
    loader.finish_epoch()
    return {"torch_ops": counter.ops, "host_ms": host_ms, "cuda_runtime_calls": runtime, "pageable_copies": pageable,
            "stages": stages}
