"""Shared-memory batch buffers: the workers' batches equal in-process ones, and kept batches stay intact."""
from __future__ import annotations

import torch

from imagenet_pack import LmdbImageNet, RandomResizedCropDecoder, build_loader
from imagenet_pack.loader import BatchRing
from imagenet_pack.loader.ring import WorkerBatch


def test_batch_ring_batches_equal_in_process_ones_and_survive_being_kept(db_session):
    """Workers decode into a few reused shared-memory slots; every batch the user keeps stays intact."""
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    ringed = build_loader(ds, 3, workers=2, seed=5, prefetch_factor=1)
    assert isinstance(ringed.dataloader.dataset, BatchRing) and len(ringed.dataloader.dataset.buffers) == 3
    reference = build_loader(ds, 3, workers=0, seed=5)
    assert not isinstance(reference.dataloader.dataset, BatchRing)
    for _ in range(2):  # two epochs: 8 batches each through 3 slots, all kept without copying
        kept, expected = list(ringed), list(reference)
        assert len(kept) == len(expected) == 8
        for (x, y), (ex, ey) in zip(kept, expected):
            assert x.dtype == torch.uint8 and x.shape == (3, 3, 16, 16)
            assert x.is_contiguous(memory_format=torch.channels_last)  # as the decoders write, as the GPU wants
            assert torch.equal(x, ex) and torch.equal(y, ey)


def test_batch_ring_reuses_an_output_buffer_only_once_nothing_shares_it():
    ring = BatchRing([], 2, 4, (3, 8, 8))
    ring.buffers[0].fill_(1)
    ring.buffers[1].fill_(2)
    first, _ = ring.take(WorkerBatch(0, [0, 1, 2, 3], 4, False, 0.0), pin=False)
    address = first.data_ptr()
    row = first[1]  # a view keeps the buffer in use after the batch itself is dropped
    del first
    second, _ = ring.take(WorkerBatch(1, [0, 1, 2, 3], 4, False, 0.0), pin=False)
    assert second.data_ptr() != address and bool((row == 1).all()) and bool((second == 2).all())
    del row
    third, _ = ring.take(WorkerBatch(1, [0, 1, 2, 3], 4, False, 0.0), pin=False)
    assert third.data_ptr() == address and bool((third == 2).all())
