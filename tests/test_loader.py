"""The loader: deterministic resumable sampler, shared-memory batches, GPU normalisation (on CPU)."""
from __future__ import annotations

import contextlib

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


@pytest.fixture(scope="module")
def photo_db(tmp_path_factory):
    """Photo-like JPEGs (smooth shapes and shading, 150x200 and 200x150): the tolerance of the GPU resample
    is stated for image content, not for the synthetic sample's pixel-level grain."""
    import cv2
    from imagenet_pack import ConvertOptions, convert
    root = tmp_path_factory.mktemp("photos") / "src"
    rng = np.random.default_rng(4)
    for c in range(3):
        folder = root / "train" / f"n0000000{c}"
        folder.mkdir(parents=True)
        for k in range(4):
            h, w = (150, 200) if k % 2 else (200, 150)
            yy, xx = np.mgrid[0:h, 0:w]
            image = np.stack([yy * 200 / h, xx * 200 / w, (yy + xx) * 100 / (h + w)], -1) + rng.uniform(0, 55, 3)
            for _ in range(6):
                cv2.ellipse(image, (int(rng.integers(0, w)), int(rng.integers(0, h))),
                            (int(rng.integers(5, 50)), int(rng.integers(5, 50))), 0, 0, 360,
                            tuple(float(v) for v in rng.uniform(0, 255, 3)), -1)
            image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.5)
            cv2.imwrite(str(folder / f"{k}.JPEG"), np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])
    convert(root, root.parent / "db", ConvertOptions(workers=1, progress=False))
    return root.parent / "db"


@pytest.mark.parametrize("backend", ["nvimgcodec", "torchvision"])
def test_gpu_decode_mode_on_cpu_matches_the_fused_cpu_decoder(photo_db, backend):
    """The whole GPU decode path (batched region decode, one batched resample, flip) on a CPU device: the
    same boxes as the fused CPU decoder, pixels within a tolerance (on real ImageNet JPEGs at 224 the mean
    absolute difference measures 0.95 levels; this content, hard edges shrunk ~5x, allows more)."""
    from imagenet_pack.gpu.decode import CropBoxDecoder, GpuBatchDecoder, collate_jpeg
    from imagenet_pack.read.pixels import NVIMGCODEC_AVAILABLE
    if backend == "nvimgcodec" and not NVIMGCODEC_AVAILABLE:
        pytest.skip("nvImageCodec not installed")
    boxes_ds = LmdbImageNet(photo_db, "train", decoder=CropBoxDecoder(seed=2))
    fused = LmdbImageNet(photo_db, "train", decoder=RandomResizedCropDecoder(32, seed=2))
    data, boxes, targets = collate_jpeg([boxes_ds[(i, 0)] for i in range(len(fused))])
    assert boxes.shape == (12, 5) and targets.tolist() == [int(t) for t in fused.targets]
    with pytest.warns(UserWarning, match="deprecated") if backend == "torchvision" else contextlib.nullcontext():
        decoder = GpuBatchDecoder(32, "cpu", backend=backend)
    images = decoder(data, boxes)
    assert images.dtype == torch.uint8 and images.shape == (12, 3, 32, 32)
    assert images.is_contiguous(memory_format=torch.channels_last) and decoder.fallbacks == 0
    reference = torch.stack([fused[(i, 0)][0] for i in range(len(fused))])
    diff = (images.float() - reference.float()).abs().mean(dim=(1, 2, 3))
    assert diff.mean() < 4.0 and diff.max() < 8.0, diff  # filter shape at hard edges, shrinking ~5x
    flipped = (images.flip(-1).float() - reference.float()).abs().mean(dim=(1, 2, 3))
    assert flipped.mean() > 5 * diff.mean(), flipped  # so wrong flips or boxes could not pass


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

    monkeypatch.setattr(tio, "decode_jpeg", picky)
    with pytest.warns(UserWarning, match="deprecated"):
        decoder = gpu_decode.GpuBatchDecoder(8, "cpu", backend="torchvision")
    images, _ = decoder.decode(data, torch.zeros((3, 5), dtype=torch.int64))
    assert decoder.fallbacks == 1
    for image, raw in zip(images, data):
        expected = real(raw, mode=tio.ImageReadMode.RGB).permute(1, 2, 0)
        assert torch.equal(image, expected) or (image.float() - expected.float()).abs().mean() < 1.0


def test_hybrid_feed_keeps_order_crops_and_exact_resume(db_session):
    """Half of every batch decoded by the GPU decode mode (here on the CPU device: the same code), half by the
    CPU workers: the sampler's order, the CPU rows exactly the CPU-only loader's, the device rows exactly
    what GpuBatchDecoder makes of the same samples, and a mid-epoch state that resumes exactly."""
    from imagenet_pack.gpu.decode import GpuBatchDecoder
    from imagenet_pack.read.pixels import NVIMGCODEC_AVAILABLE
    if not NVIMGCODEC_AVAILABLE:
        pytest.skip("nvImageCodec not installed")
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    cpu_only = list(build_loader(ds, 6, workers=2, seed=4, persistent_workers=False))
    hybrid = build_loader(ds, 6, workers=2, seed=4, gpu_share=0.5, device="cpu", persistent_workers=False)
    assert hybrid.gpu_share == 0.5
    batches = list(hybrid)
    assert [t.tolist() for _, t in batches] == [t.tolist() for _, t in cpu_only]
    order = hybrid.sampler.order(0)[:24].tolist()  # the epoch just iterated (the loader moved on to epoch 1)
    decoder = GpuBatchDecoder(16, "cpu")
    for b, ((images, _), (cpu_images, _)) in enumerate(zip(batches, cpu_only)):
        assert torch.equal(images[:3], cpu_images[:3])  # the CPU workers' share: identical
        data, boxes, _ = ds.encoded_batch([(i, 0) for i in order[6 * b + 3:6 * b + 6]])
        assert torch.equal(images[3:], decoder(data, torch.tensor(boxes)))  # the device's share
    resumed = build_loader(ds, 6, workers=2, seed=4, gpu_share=0.5, device="cpu", persistent_workers=False)
    first = next(iter(CudaPrefetcher(resumed, "cpu", depth=0)))[1].tolist()
    state = resumed.state_dict()
    again = build_loader(ds, 6, workers=2, seed=4, gpu_share=0.5, device="cpu", persistent_workers=False)
    again.load_state_dict(state)
    assert [first] + [t.tolist() for _, t in again] == [t.tolist() for _, t in cpu_only]


def test_hybrid_share_auto_is_measured_and_reported(db_session):
    from imagenet_pack.read.pixels import NVIMGCODEC_AVAILABLE
    if not NVIMGCODEC_AVAILABLE:
        pytest.skip("nvImageCodec not installed")
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    loader = build_loader(ds, 6, workers=1, gpu_share="auto", device="cpu", persistent_workers=False)
    assert 0.0 < loader.gpu_share < 1.0
    assert sum(len(t) for _, t in loader) == 24
    with pytest.raises(ValueError, match="gpu_share needs loader workers"):
        build_loader(ds, 6, workers=0, gpu_share=0.5, device="cpu")
