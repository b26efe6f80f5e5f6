"""The loader: deterministic resumable sampler, shared-memory batches, GPU normalisation (on CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import transforms

from imagenet_pack import LmdbImageNet, RandomResizedCropDecoder
from imagenet_pack.gpu import IMAGENET_MEAN, IMAGENET_STD, CudaPrefetcher, normalize
from imagenet_pack.loader import BatchRing, build_loader, collate_uint8
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
    for s in old:
        s.position = steps * batch  # what the loaders count as they hand batches out
    state = old[0].state_dict()
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


def test_sampler_state_refuses_another_seed_or_length():
    s = EpochSampler(10, rank=0, world_size=2, seed=1)
    with pytest.raises(ValueError, match="the order would differ"):
        EpochSampler(10, rank=0, world_size=3, seed=2).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="the order would differ"):
        EpochSampler(11, rank=0, world_size=2, seed=1).load_state_dict(s.state_dict())


def test_loader_uint8_batches_epochs_and_mid_epoch_resume(db_session):
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=1))
    loader = build_loader(ds, 5, workers=2, seed=3)
    first = [(x.clone(), y) for x, y in loader]
    assert all(x.dtype == torch.uint8 and x.shape == (5, 3, 16, 16) for x, _ in first)
    assert len(first) == len(loader) == 24 // 5 and loader.epoch == 1
    second = [y for _, y in loader]
    assert loader.epoch == 2
    # a fresh loader replays epoch 0 exactly (same crops: per (seed, epoch, index))
    again = build_loader(ds, 5, workers=2, seed=3)
    replay = list(again)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, replay))
    # stop after 2 batches of epoch 1, save, resume in a new loader: exactly the rest of epoch 1
    run = build_loader(ds, 5, workers=0, seed=3)
    run.load_state_dict({"epoch": 1, "position": 0, "seed": 3, "world_size": 1})
    it = iter(run)
    head = [next(it)[1] for _ in range(2)]
    state = run.state_dict()
    assert state == {"epoch": 1, "consumed": 10, "seed": 3, "length": 24, "shuffle": True, "world_size": 1}
    resumed = build_loader(ds, 5, workers=2, seed=3)
    resumed.load_state_dict(state)
    tail = [y for _, y in resumed]
    assert torch.equal(torch.cat(head + tail), torch.cat(second))


def test_batch_ring_batches_equal_in_process_ones_and_survive_being_kept(db_session):
    """Workers decode into a few reused shared-memory slots; every batch the user keeps stays intact."""
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    ringed = build_loader(ds, 3, workers=2, seed=5, prefetch_factor=1)
    assert isinstance(ringed.loader.dataset, BatchRing) and len(ringed.loader.dataset.buffers) == 3
    reference = build_loader(ds, 3, workers=0, seed=5)
    assert not isinstance(reference.loader.dataset, BatchRing)
    for _ in range(2):  # two epochs: 8 batches each through 3 slots, all kept without copying
        kept, expected = list(ringed), list(reference)
        assert len(kept) == len(expected) == 8
        for (x, y), (ex, ey) in zip(kept, expected):
            assert x.dtype == torch.uint8 and x.shape == (3, 3, 16, 16)
            assert x.is_contiguous(memory_format=torch.channels_last)  # as the decoders write, as the GPU wants
            assert torch.equal(x, ex) and torch.equal(y, ey)
    # eval keeps the last partial batch: 24 samples in batches of 5
    val = build_loader(ds, 5, train=False, workers=2)
    assert [len(y) for _, y in val] == [5, 5, 5, 5, 4]


def test_batch_ring_reuses_an_output_buffer_only_once_nothing_shares_it():
    ring = BatchRing([], 2, 4, (3, 8, 8))
    ring.buffers[0].fill_(1)
    ring.buffers[1].fill_(2)
    first, _ = ring.take(0, [0, 1, 2, 3], pin=False)
    address = first.data_ptr()
    row = first[1]  # a view keeps the buffer in use after the batch itself is dropped
    del first
    second, _ = ring.take(1, [0, 1, 2, 3], pin=False)
    assert second.data_ptr() != address and bool((row == 1).all()) and bool((second == 2).all())
    del row
    third, _ = ring.take(1, [0, 1, 2, 3], pin=False)
    assert third.data_ptr() == address and bool((third == 2).all())


def test_fused_decode_batch_decodes_in_place(db_session):
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    assert ds.batch_shape == (3, 16, 16)
    images = torch.zeros((4, 16, 16, 3), dtype=torch.uint8).permute(0, 3, 1, 2)  # channels-last, as the ring's
    targets = ds.decode_batch([(i, 0) for i in range(4)], images)
    assert all(torch.equal(images[i], ds[(i, 0)][0]) for i in range(4))
    assert targets == [int(t) for t in ds.targets[:4]]
    # in-process (no workers), the same samples are stacked by collate_uint8
    stacked, stacked_targets = collate_uint8([ds[(i, 0)] for i in range(4)])
    assert torch.equal(stacked, images) and stacked_targets.tolist() == targets
    # a transform: no fixed batch shape, so no ring
    transformed = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16), transform=lambda x: x)
    assert transformed.batch_shape is None
    assert not isinstance(build_loader(transformed, 4, workers=1).loader.dataset, BatchRing)


def test_normalize_matches_torchvision():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ref = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(images.float() / 255)
    assert torch.allclose(normalize(images), ref, atol=1e-5)
    half = normalize(images, dtype=torch.bfloat16, channels_last=True)
    assert half.dtype == torch.bfloat16 and half.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(half.float(), ref, atol=0.03)
    # the loader's channels-last uint8 batches: NCHW-contiguous out unless channels_last is asked for
    plain = normalize(images.contiguous(memory_format=torch.channels_last))
    assert plain.is_contiguous() and torch.allclose(plain, ref, atol=1e-5)


def test_prefetcher_on_cpu_yields_normalised_batches():
    batches = [(torch.full((2, 3, 4, 4), v, dtype=torch.uint8), torch.tensor([v, v])) for v in (0, 128, 255)]
    out = list(CudaPrefetcher(batches, "cpu"))
    assert len(out) == 3 and torch.equal(out[1][1], torch.tensor([128, 128]))
    assert torch.allclose(out[2][0][0, :, 0, 0], torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]))


class Recording:
    """A dataset whose samples say their own index, so the batches a loop received can be checked."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        index, _ = item
        return torch.full((3, 2, 2), index % 256, dtype=torch.uint8), index


@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize("stop_after", [1, 4, 6])
def test_prefetcher_look_ahead_keeps_the_saved_position_the_training_loops(depth, stop_after):
    """A checkpoint after step k records exactly the samples the loop received, however far ahead the
    prefetcher has pulled (the same look-ahead code runs on CPU and CUDA)."""
    full = build_loader(Recording(30), 4, workers=0, seed=3)
    epoch = [t.tolist() for _, t in CudaPrefetcher(full, "cpu", depth=depth)]
    loader = build_loader(Recording(30), 4, workers=0, seed=3)
    received = []
    for step, (_, targets) in enumerate(CudaPrefetcher(loader, "cpu", depth=depth)):
        received.append(targets.tolist())
        if step + 1 == stop_after:
            state = loader.state_dict()  # taken after training on batch k, as tools/train.py does
            break
    assert state["epoch"] == 0 and state["consumed"] == 4 * stop_after
    resumed = build_loader(Recording(30), 4, workers=0, seed=3)
    resumed.load_state_dict(state)
    rest = [t.tolist() for _, t in CudaPrefetcher(resumed, "cpu", depth=depth)]
    assert received + rest == epoch  # every sample of the epoch once, in the epoch's order
    assert resumed.epoch == 1 and resumed.state_dict()["consumed"] == 0  # the epoch ended with its last batch


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prefetcher_on_cuda_matches_cpu():
    batches = [(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8).pin_memory(), torch.arange(4)) for _ in range(3)]
    for (g, gt), (c, ct) in zip(CudaPrefetcher(batches, "cuda"), CudaPrefetcher(batches, "cpu")):
        assert torch.allclose(g.cpu(), c, atol=1e-5) and torch.equal(gt.cpu(), ct)


def test_gpu_decode_mode_on_cpu_matches_torchvision_crops(db_session):
    from torchvision.transforms import functional as F
    from imagenet_pack.gpu.decode import CropBoxDecoder, GpuBatchDecoder, collate_jpeg

    boxes_ds = LmdbImageNet(db_session, "train", decoder=CropBoxDecoder(seed=2))
    pil_ds = LmdbImageNet(db_session, "train")
    batch = collate_jpeg([boxes_ds[(i, 0)] for i in range(6)])
    data, boxes, targets = batch
    assert boxes.shape == (6, 5) and targets.tolist() == [int(t) for t in pil_ds.targets[:6]]
    images = GpuBatchDecoder(16, "cpu")(data, boxes)
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 16, 16)
    for i, (top, left, h, w, flip) in enumerate(boxes.tolist()):
        ref = F.pil_to_tensor(F.resized_crop(pil_ds[i][0], top, left, h, w, [16, 16], antialias=True))
        ref = ref.flip(-1) if flip else ref
        assert (images[i].float() - ref.float()).abs().mean() < 4.0


def test_gpu_decode_falls_back_to_opencv_for_undecodable_records(db_session, monkeypatch):
    """A record the device decoder refuses (as nvJPEG refuses some) is decoded on the CPU instead."""
    import torchvision.io as tio
    from imagenet_pack.gpu import decode as gpu_decode

    records = [LmdbImageNet(db_session, "train").read_record(i).image for i in range(3)]
    data = [torch.frombuffer(bytearray(r), dtype=torch.uint8) for r in records]
    real = tio.decode_jpeg

    def picky(inputs, **kw):
        if isinstance(inputs, list) or int(inputs[100]) == int(data[1][100]) and len(inputs) == len(data[1]):
            raise RuntimeError("nvjpeg: unsupported")
        return real(inputs, **kw)

    monkeypatch.setattr(gpu_decode.tio, "decode_jpeg", picky)
    decoder = gpu_decode.GpuBatchDecoder(8, "cpu")
    images = decoder.decode(data)
    assert decoder.fallbacks == 1
    for image, raw in zip(images, data):
        assert torch.equal(image, real(raw, mode=tio.ImageReadMode.RGB)) or \
            (image.float() - real(raw, mode=tio.ImageReadMode.RGB).float()).abs().mean() < 1.0
