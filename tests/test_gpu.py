"""The device path on a real CUDA GPU (skipped without one): what the CPU-device tests cannot show, i.e. the
GPU's own decoders, the side stream's hand-over to the training loop, and no host synchronisation."""
from __future__ import annotations

from pathlib import Path

import helpers
import pytest
import torch

from imagenet_pack import CudaPrefetcher, LmdbImageNet, RandomResizedCropDecoder, build_loader
from imagenet_pack.bench.feed import device_path_cost, stage_batch
from imagenet_pack.gpu.decode import GpuBatchDecoder
from imagenet_pack.gpu.device import resolve_device
from imagenet_pack.read.nvcodec import REGIONS_FROM_NVJPEG, nvjpeg_version

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

LEVELS = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)  # "normalisation" that leaves 0-255 pixel levels


@pytest.fixture(scope="module")
def photo_db(tmp_path_factory) -> Path:
    return helpers.photo_db(tmp_path_factory.mktemp("photos"), copies=4)


def _fused(db: Path) -> LmdbImageNet:
    return LmdbImageNet(db, "train", decoder=RandomResizedCropDecoder(96, seed=3))


def test_every_device_index_is_kept():
    last = torch.cuda.device_count() - 1
    assert resolve_device(f"cuda:{last}") == torch.device("cuda", last)
    with torch.cuda.device(last):
        assert resolve_device("cuda") == torch.device("cuda", last)


@pytest.mark.nvimgcodec
def test_gpu_decode_on_cuda_is_within_a_level_of_the_cpu_fused_decoder(photo_db):
    fused = _fused(photo_db)
    items = [(i, 0) for i in range(len(fused))]
    staged, _ = stage_batch(fused, items)
    decoder = GpuBatchDecoder(96, "cuda", batch_size=len(items))
    images = decoder(staged)
    torch.cuda.synchronize()
    version = nvjpeg_version()
    assert decoder.regions == (version is not None and version >= REGIONS_FROM_NVJPEG)
    assert images.device.type == "cuda" and images.dtype == torch.uint8
    reference = torch.stack([fused[item][0] for item in items]).cuda()
    d = (images.float() - reference.float()).abs()
    assert d.mean().item() <= 1.0
    for edge in (d[:, :, 0], d[:, :, -1], d[:, :, :, 0], d[:, :, :, -1]):
        assert edge.mean().item() <= 3.0


def _batches(loader, **prefetch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.cpu(), y.cpu()) for x, y in CudaPrefetcher(loader, "cuda", **prefetch)]


def test_the_prefetcher_hands_over_normalised_batches_on_the_device(photo_db):
    ds = _fused(photo_db)
    on_cpu = [(x.float(), y) for x, y in build_loader(ds, 8, seed=1, workers=1)]
    seen = []
    for x, y in CudaPrefetcher(build_loader(ds, 8, seed=1, workers=1), "cuda", dtype=torch.bfloat16,
                               channels_last=True, **LEVELS):
        assert x.device.type == "cuda" and x.dtype == torch.bfloat16
        assert x.is_contiguous(memory_format=torch.channels_last) and y.device.type == "cuda"
        seen.append((x.float().cpu(), y.cpu()))  # consumed on the loop's stream: the side stream's work is done
    assert [y.tolist() for _, y in seen] == [y.tolist() for _, y in on_cpu]
    for (x, _), (ref, _) in zip(seen, on_cpu):
        assert (x - ref).abs().max().item() <= 1.0  # bf16 holds 0-255 to within a level


@pytest.mark.nvimgcodec
def test_the_hybrid_feed_on_cuda_yields_the_cpu_loaders_samples(photo_db):
    ds = _fused(photo_db)
    cpu_only = _batches(build_loader(ds, 8, seed=1, workers=1), **LEVELS)
    hybrid = _batches(build_loader(ds, 8, seed=1, workers=1, gpu_share=0.5, device="cuda"), **LEVELS)
    assert [y.tolist() for _, y in hybrid] == [y.tolist() for _, y in cpu_only]
    for (x, _), (ref, _) in zip(hybrid, cpu_only):
        assert (x - ref).abs().mean().item() <= 1.0


def test_the_steady_state_feed_never_synchronises_the_host(photo_db):
    ds = _fused(photo_db)
    batches = iter(CudaPrefetcher(build_loader(ds, 8, seed=1, workers=1), "cuda", dtype=torch.bfloat16))
    x, _ = next(batches)  # the first batch sets up constants and streams
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches:
            (x.float().mean() + y.float().mean()).detach()  # the loop's own work, queued only
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.nvimgcodec
def test_the_device_path_costs_the_host_few_calls_and_no_pageable_copy(photo_db):
    """Per batch of the GPU decode mode: a bounded number of CUDA runtime calls (not a few per image) and no
    copy from pageable memory (each would make the host wait)."""
    loader = build_loader(_fused(photo_db), 16, seed=1, workers=1, gpu_share=1.0, device="cuda")
    cost = device_path_cost(loader, batches=3)
    assert cost["pageable_copies"] == 0, cost
    assert cost["cuda_runtime_calls"] <= 100, cost


@pytest.mark.nvimgcodec
def test_the_hybrid_steady_state_never_synchronises_the_host(photo_db):
    loader = build_loader(_fused(photo_db), 8, seed=1, workers=1, gpu_share=0.5, device="cuda")
    batches = iter(CudaPrefetcher(loader, "cuda", dtype=torch.bfloat16))
    next(batches), next(batches)  # the first batches set up constants, streams, decoders, pinned buffers
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches:
            (x.float().mean() + y.float().mean()).detach()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
