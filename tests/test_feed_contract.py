"""The ``Feed`` contract, held by every feed ``build_loader`` makes: the CPU loader and the hybrid at shares 0,
0.5, 1 and "auto" (on the CPU device). For each: ``len`` is a full epoch's batches, before and after a resume;
an epoch delivers the epoch's samples in the sampler's order; leaving it early loses nothing (the next pass
continues it); a state saved mid-epoch resumes in a fresh feed with exactly the rest; the epoch advances at
the end of each pass."""
from __future__ import annotations

import pytest
import torch

from imagenet_pack import Feed, LmdbImageNet, RandomResizedCropDecoder, build_loader

BATCH = 4
FEEDS = {"CPU loader": 0.0, "hybrid 0.5": 0.5, "hybrid 1": 1.0, "hybrid auto": "auto"}


def _feed(ds: LmdbImageNet, share: float | str) -> Feed:
    options = dict(workers=1, seed=5, device="cpu", persistent_workers=False)
    return build_loader(ds, BATCH, **options) if share == 0.0 else build_loader(ds, BATCH, gpu_share=share, **options)


@pytest.mark.slow  # the device rows run Triton's kernels under its interpreter
@pytest.mark.parametrize("name", list(FEEDS))
def test_every_feed_keeps_the_feed_contract(db_session, name):
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=1))
    order = [y for _, y in build_loader(ds, BATCH, workers=0, seed=5, device="cpu")]  # the reference order
    epochs = len(ds) // BATCH
    feed = _feed(ds, FEEDS[name])
    assert isinstance(feed, Feed) and len(feed) == epochs and feed.epoch == 0
    got = []
    for images, targets in feed:  # early break after two batches ...
        assert images.dtype == torch.uint8 and images.shape == (BATCH, 3, 16, 16)
        got.append(targets)
        if len(got) == 2:
            break
    assert feed.epoch == 0 and feed.delivered == 2 * BATCH
    state = feed.state_dict()
    assert state["epoch"] == 0 and state["consumed"] == 2 * BATCH
    resumed = _feed(ds, FEEDS[name])
    resumed.load_state_dict(state)
    assert len(resumed) == epochs  # a full epoch's batches, as before the interruption
    rest = [y for _, y in resumed]  # ... a fresh feed from the saved state: exactly the rest of the epoch
    assert torch.equal(torch.cat(got + rest), torch.cat(order)) and resumed.epoch == 1
    got += [y for _, y in feed]  # ... and the feed itself continues the epoch it left
    assert torch.equal(torch.cat(got), torch.cat(order)) and feed.epoch == 1 and feed.delivered == 0
    second = [y for _, y in feed]  # the next epoch, whole, in another order
    assert len(second) == epochs and feed.epoch == 2
    assert sorted(torch.cat(second).tolist()) == sorted(torch.cat(order).tolist())
