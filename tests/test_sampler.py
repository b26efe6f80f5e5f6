"""The sampler: deterministic per (seed, epoch), disjoint shares per rank, resumable on another world size."""
from __future__ import annotations

import numpy as np
import pytest

from imagenet_pack.loader.sampler import EpochSampler


def test_sampler_shards_disjointly_and_depends_only_on_seed_epoch_world():
    ranks = [EpochSampler(103, seed=5, rank=r, world_size=4) for r in range(4)]
    for epoch in range(3):
        for s in ranks:
            s.set_epoch(epoch)
        shares = [[i for i, e in s] for s in ranks]
        assert all(len(x) == 26 for x in shares)
        assert set().union(*map(set, shares)) == set(range(103))
        flat = sum(shares, [])
        assert len(flat) - len(set(flat)) == 1  # padding repeats exactly the missing slot
    a, b = EpochSampler(103, seed=5, rank=1, world_size=4), EpochSampler(103, seed=5, rank=1, world_size=4)
    assert a.indices(2).tolist() == b.indices(2).tolist() and a.indices(1).tolist() != a.indices(2).tolist()
    assert a.indices(0).dtype == np.int32  # one numpy array per epoch, no Python list of 14 M ints


def test_eval_sampler_gives_every_sample_exactly_once():
    shares = [list(EpochSampler(10, shuffle=False, rank=r, world_size=3, pad=False)) for r in range(3)]
    assert sorted(i for share in shares for i, _ in share) == list(range(10))


@pytest.mark.parametrize("before, after", [(2, 3), (3, 2), (4, 1)])
@pytest.mark.parametrize("pad", [True, False])
def test_sampler_resumes_on_another_world_size_with_every_sample_once(before, after, pad):
    n, steps, batch = 103, 3, 4
    old = [EpochSampler(n, seed=7, rank=r, world_size=before, pad=pad) for r in range(before)]
    for s in old:
        s.set_epoch(2)
    seen = [i for s in old for i in s.indices(2)[:steps * batch].tolist()]
    state = old[0].state_dict(steps * batch)  # what the loaders count as they hand batches out
    assert state["consumed"] == before * steps * batch and state["epoch"] == 2
    new = [EpochSampler(n, seed=7, rank=r, world_size=after, pad=pad) for r in range(after)]
    for s in new:
        s.load_state_dict(state)
    rest = [[i for i, e in s] for s in new]
    assert all(e == 2 for s in new for _, e in s)
    assert [len(r) for r in rest] == [len(s) for s in new]
    seen += [i for r in rest for i in r]
    assert set(seen) == set(range(n))
    assert len(seen) - n == ((-(n - before * steps * batch)) % after if pad else 0)  # padding only at the end
    # the consumed prefix of the epoch's order is the same whatever the world size
    assert sorted(seen[:before * steps * batch]) == sorted(old[0].order(2)[:before * steps * batch].tolist())
    assert all(s.per_rank() == s.per_rank(0) >= len(s) for s in new)  # a full epoch's share, whatever is left


def test_sampler_state_refuses_another_seed_or_length():
    s = EpochSampler(10, rank=0, world_size=2, seed=1)
    with pytest.raises(ValueError, match="the order would differ"):
        EpochSampler(10, rank=0, world_size=3, seed=2).load_state_dict(s.state_dict(0))
    with pytest.raises(ValueError, match="the order would differ"):
        EpochSampler(11, rank=0, world_size=2, seed=1).load_state_dict(s.state_dict(0))
