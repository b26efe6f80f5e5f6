"""Each private torch API the fast paths use has a public fallback that gives the same pixels and behaviour."""
from __future__ import annotations

import torch

from imagenet_pack import LmdbImageNet, RandomResizedCropDecoder, build_loader
from imagenet_pack.loader import BatchRing, ring
from imagenet_pack.loader.ring import WorkerBatch
from imagenet_pack.read import decoders
from imagenet_pack.read.crops import Plan


def test_antialiased_resize_fallback_gives_the_same_pixels(db_session, monkeypatch):
    ds = LmdbImageNet(db_session, "train")
    records = [ds.read_record(i) for i in range(len(ds))]
    # whole images: always a shrink to 20 px (torch's path)
    plans = [Plan((0, 0, r.height, r.width), (20, 20), (0, 0), i % 2 == 0) for i, r in enumerate(records)]
    fast = [decoders.decode_plan(r, p, 20, "t") for r, p in zip(records, plans)]
    assert decoders.UPSAMPLE_BILINEAR_AA is not None  # this torch has the private op: the comparison means something
    monkeypatch.setattr(decoders, "UPSAMPLE_BILINEAR_AA", None)
    for i, (r, p) in enumerate(zip(records, plans)):
        row = torch.zeros((1, 20, 20, 3), dtype=torch.uint8).permute(0, 3, 1, 2)[0]
        assert torch.equal(decoders.decode_plan(r, p, 20, "t", dest=row), fast[i]), i


def test_shared_memory_fallback_feeds_workers_the_same_batches(db_session, monkeypatch):
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    reference = list(build_loader(ds, 4, workers=0, seed=1))
    monkeypatch.setattr(ring, "NEW_SHARED", None)
    tensor = ring.shared_empty((2, 3))
    assert tensor.is_shared() and tensor.shape == (2, 3) and tensor.dtype == torch.uint8
    loader = build_loader(ds, 4, workers=2, seed=1, persistent_workers=False)
    assert isinstance(loader.dataloader.dataset, BatchRing) and loader.dataloader.dataset.buffers.is_shared()
    batches = list(loader)
    assert len(batches) == len(reference)
    for (x, y), (ex, ey) in zip(batches, reference):
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_without_the_storage_use_count_output_buffers_are_never_reused(monkeypatch):
    monkeypatch.setattr(ring, "STORAGE_USE_COUNT", None)
    batch_ring = BatchRing([], 2, 4, (3, 8, 8))
    batch_ring.buffers[0].fill_(1)
    batch_ring.buffers[1].fill_(2)
    first, _ = batch_ring.take(WorkerBatch(0, [0, 1, 2, 3], 4, False, 0.0), pin=False)
    del first  # nothing shares it any more, but without a use count that cannot be known: a fresh buffer
    second, _ = batch_ring.take(WorkerBatch(1, [0, 1, 2, 3], 4, False, 0.0), pin=False)
    assert bool((second == 2).all())
    assert not batch_ring._spares or all(free < 0 for _, free in batch_ring._spares)
    third, _ = batch_ring.take(WorkerBatch(0, [0, 1, 2, 3], 4, False, 0.0), pin=False)
    assert bool((third == 1).all()) and bool((second == 2).all()) and third.data_ptr() != second.data_ptr()
