"""GPU decode mode and the hybrid feed, on the CPU device (the same code CUDA runs, with nvImageCodec's CPU
decoder): records staged by the workers, the batched resample, errors handled per image, the merge, the
share."""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch

from imagenet_pack import CenterCropDecoder, CudaPrefetcher, LmdbImageNet, RandomResizedCropDecoder, build_loader
from imagenet_pack.bench.feed import edge_errors, stage_batch
from imagenet_pack.gpu.decode import GpuBatchDecoder
from imagenet_pack.gpu.device import resolve_device
from imagenet_pack.loader.ring import WorkerBatch
from imagenet_pack.read.staged import COLUMNS, StagedRecords


@pytest.fixture(scope="module")
def photo_db(tmp_path_factory) -> Path:
    return helpers.photo_db(tmp_path_factory.mktemp("photos"), copies=2)


GEOMETRIES = {  # both of the fused decoders' crop laws: the device runs the plans they draw
    "train: RandomResizedCrop + flip": lambda: RandomResizedCropDecoder(64, seed=2, dct_scaling=False),
    "val: Resize(73) + CenterCrop(64)": lambda: CenterCropDecoder(64, resize_size=73),
    "val, FFCV's centre crop": lambda: CenterCropDecoder(64, geometry="ffcv"),
}


@pytest.mark.slow  # the kernels under Triton's interpreter: seconds a batch (test_resample checks them fast)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("backend", [pytest.param("nvimgcodec", marks=pytest.mark.nvimgcodec), "torchvision"])
def test_gpu_decode_mode_equals_the_fused_cpu_decoder_up_to_the_edges(photo_db, backend, geometry):
    """The whole device path on a CPU device against the CPU fused decoder on the same records and plans:
    within a level on average and on every edge row and column (no zero padding from a larger image bleeds
    into a smaller one's last rows, in a batch of boxes of many sizes), for train and val geometry."""
    fused = LmdbImageNet(photo_db, "train", decoder=GEOMETRIES[geometry]())
    items = [(i, 0) for i in range(len(fused))]
    staged, _ = stage_batch(fused, items)
    with pytest.warns(UserWarning, match="deprecated") if backend == "torchvision" else contextlib.nullcontext():
        decoder = GpuBatchDecoder(64, "cpu", backend=backend)
    assert decoder.regions == (backend == "nvimgcodec")  # torchvision decodes whole images: the box is cut after
    images = decoder(staged)
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 64, 64)
    assert images.is_contiguous(memory_format=torch.channels_last) and decoder.fallbacks == 0
    reference = torch.stack([fused[item][0] for item in items])
    errors = edge_errors(images, reference)
    assert errors["mean"] <= 1.0 and max(errors.values()) <= 1.5, errors
    assert edge_errors(images.flip(-1), reference)["mean"] > 5, "a wrong flip or box would not pass"
    assert torch.equal(decoder(staged), images)  # the staged batch is read, never changed


@pytest.mark.slow  # seconds: the kernels under Triton's interpreter
@pytest.mark.nvimgcodec
def test_what_the_device_decoder_fails_on_or_returns_at_another_size_goes_to_opencv(photo_db, monkeypatch):
    ds = LmdbImageNet(photo_db, "train", decoder=RandomResizedCropDecoder(32, seed=1))
    staged, _ = stage_batch(ds, [(i, 0) for i in range(4)])
    reference = GpuBatchDecoder(32, "cpu")(staged)
    nv, decoder, params = GpuBatchDecoder(32, "cpu")._decoder()
    real_stream = nv.CodeStream

    def picky(data):  # a header it cannot parse, for record 1
        if bytes(data) == bytes(staged.record(1)):
            raise RuntimeError("nvImageCodec: cannot parse the header")
        return real_stream(data)

    for regions in (True, False):  # boxes decoded (nvJPEG from 13.2), or whole images (before it)
        plain = GpuBatchDecoder(32, "cpu")
        plain.regions = regions
        expected = plain(staged)
        monkeypatch.setattr(nv, "CodeStream", picky)
        guarded = GpuBatchDecoder(32, "cpu")
        guarded.regions = regions
        assert torch.equal(guarded(staged), expected) and guarded.fallbacks == 1
        monkeypatch.setattr(nv, "CodeStream", real_stream)

    class Short:  # what a decoder gives back for a header that lies: one row short
        shape = (staged.box(2)[2] - 1, staged.box(2)[3], 3)

    class Lying:
        def decode(self, streams, **kw):
            images = decoder.decode(streams, **kw)
            images[2] = Short()
            return images

    sized = GpuBatchDecoder(32, "cpu")
    sized._nv = (nv, Lying(), params)
    assert torch.equal(sized(staged), reference) and sized.fallbacks == 1


def test_workers_stage_records_and_plans_and_decode_what_does_not_fit(db_session):
    """A worker's hand-over: each record's bytes and the plan the fused decoder draws for it; a record that does
    not fit what is left of the room is decoded by the worker into its batch row instead."""
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    items = [(i, 3) for i in range(6)]
    roomy, images = stage_batch(ds, items)
    assert roomy.rows == 6 and (roomy.fields["length"] > 0).all()
    for row, (index, epoch) in enumerate(items):
        record = ds.read_record(index)
        assert bytes(roomy.record(row)) == record.image and roomy.row(row)["target"] == record.target
        plan = ds.decoder.law.plan(record.height, record.width, index, epoch)
        assert roomy.box(row) == plan.box and bool(roomy.row(row)["flip"]) == plan.flip
    tight = StagedRecords(np.empty(int(roomy.fields["length"][:2].sum()), np.uint8),
                          np.zeros_like(roomy.table))
    images = torch.zeros((6, 16, 16, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    targets = ds.stage_records(items, tight, images)
    assert list(tight.on_device) == [0, 1] and targets == list(roomy.fields["target"])
    for row in range(2, 6):  # decoded by the worker, exactly as the CPU loader would
        assert torch.equal(images[row], ds[items[row]][0])
    out = GpuBatchDecoder(16, "cpu")(tight, images.clone())
    assert torch.equal(out[2:], images[2:]) and torch.equal(out[:2], GpuBatchDecoder(16, "cpu")(roomy)[:2])


def test_staged_rows_read_each_record_once_and_their_targets_transformed_as_decoded_ones(db_session, monkeypatch):
    """PinnedBuffers reads each record once, also one decoded by the worker for want of room, and gives the targets
    the dataset gives (its ``target_transform`` applied), as the rows the workers decode do."""
    from imagenet_pack.read.reader import Shard
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2),
                      target_transform=lambda t: t + 1000)
    items = [(i, 3) for i in range(4)]
    expected = [ds[item][1] for item in items]
    reads = []
    real_read = Shard.read
    monkeypatch.setattr(Shard, "read", lambda self, local, where: reads.append(local) or real_read(self, local, where))
    tight = StagedRecords(np.empty(len(ds.read_record(0).image), np.uint8), np.zeros((4, len(COLUMNS)),
                                                                                    np.int64))
    reads.clear()
    images = torch.zeros((4, 16, 16, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    assert ds.stage_records(items, tight, images) == expected
    assert list(tight.on_device) == [0] and len(reads) == 4


@pytest.mark.nvimgcodec
def test_hybrid_feed_keeps_order_crops_and_exact_resume(db_session):
    """Half of every batch decoded by the GPU decode mode (here on the CPU device: the same code), half by the
    CPU workers: the sampler's order, the CPU rows exactly the CPU-only loader's, the device rows exactly
    what GpuBatchDecoder makes of the same samples, and a mid-epoch state that resumes exactly."""
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
        staged, _ = stage_batch(ds, [(i, 0) for i in order[6 * b + 3:6 * b + 6]])
        assert torch.equal(images[3:], decoder(staged))  # the device's share
    resumed = build_loader(ds, 6, workers=2, seed=4, gpu_share=0.5, device="cpu", persistent_workers=False)
    first = next(iter(CudaPrefetcher(resumed, "cpu")))[1].tolist()
    state = resumed.state_dict()
    assert state["gpu_share_segments"] == [[0, 0, 0.5]]
    again = build_loader(ds, 6, workers=2, seed=4, gpu_share=0.5, device="cpu", persistent_workers=False)
    again.load_state_dict(state)
    assert [first] + [t.tolist() for _, t in again] == [t.tolist() for _, t in cpu_only]


def test_the_workers_send_back_no_bytes_and_the_main_process_reads_no_record(db_session, monkeypatch):
    """What a worker returns for a batch is a WorkerBatch (slot, targets, rows, seconds), never image bytes;
    the device's rows come staged in the ring, so the main process never reads the database."""
    import imagenet_pack.contract.lmdbfile as lmdbfile
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    loader = build_loader(ds, 6, workers=1, gpu_share=0.5, device="cpu", persistent_workers=False)
    raw = next(iter(loader.epoch_loader.dataloader))
    assert isinstance(raw, WorkerBatch) and len(raw.targets) == 6 and raw.cpu_rows == 3 and raw.seconds > 0
    reads, main = [], os.getpid()
    for name in ("read", "locate"):
        real = getattr(lmdbfile.LmdbFile, name)

        def counted(*a, _real=real, **k):  # the forked workers inherit this: they count nothing here
            if os.getpid() == main:
                reads.append(a)
            return _real(*a, **k)
        monkeypatch.setattr(lmdbfile.LmdbFile, name, counted)
    images, targets = next(iter(build_loader(ds, 6, workers=1, gpu_share=1.0, device="cpu",
                                             persistent_workers=False)))
    assert not reads and images.shape == (6, 3, 16, 16) and len(targets) == 6


def test_staging_buffers_are_made_once_and_reused(db_session, monkeypatch):
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    loader = build_loader(ds, 4, workers=1, gpu_share=0.5, device="cpu", persistent_workers=False)
    made = []
    real = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: made.append(a) or real(*a, **k))
    buffers = set()
    for batch in loader.batches():
        buffers.add(batch.images.untyped_storage().data_ptr())
        loader.to_device(batch, torch.device("cpu"))
    host = [a for a in made if a and isinstance(a[0], tuple) and len(a[0]) == 1 and a[0][0] > 1 << 16]
    assert len(buffers) <= 4 and not host  # four pinned buffers, reused; none allocated per batch


def test_a_device_without_index_is_this_process_s_current_gpu(monkeypatch):
    """Each rank decodes on its own GPU: "cuda" resolves to the current device (set per rank), not GPU 0."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cpu") == torch.device("cpu")


@pytest.mark.nvimgcodec
def test_cpu_threads_of_the_workers_decoders_are_one(monkeypatch):
    from imagenet_pack.read import nvcodec
    made = []
    monkeypatch.setattr(nvcodec, "_NV", None)
    nv = nvcodec.cpu_decoder()[0]
    real = nv.Decoder
    monkeypatch.setattr(nv, "Decoder", lambda **kw: made.append(kw) or real(**kw))
    monkeypatch.setattr(nvcodec, "_NV", (os.getpid() + 1, None, None, None))  # as in a freshly forked worker
    nvcodec.cpu_decoder()
    assert made and made[0]["max_num_cpu_threads"] == 1


@pytest.mark.nvimgcodec
def test_the_device_s_decoders_are_set_per_mode(db_session, monkeypatch):
    """GPU decode mode gives the hardware engine 0.65 of each batch and lets nvImageCodec balance it against
    the hybrid decoder (the cores are the device stage's); the hybrid feed gives the engine everything, the
    hybrid decoder only what the engine refuses (the cores are the workers')."""
    from imagenet_pack.read import nvcodec
    nv = nvcodec.cpu_decoder()[0]
    made = []
    monkeypatch.setattr(nv, "Decoder", lambda **kw: made.append(kw) or object())
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    for share in (1.0, 0.5, "auto"):
        loader = build_loader(ds, 4, workers=1, gpu_share=share, device="cpu", persistent_workers=False)
        nvcodec.gpu_decoder(0, kinds=("hw", "hybrid"), threads=2, batch_size=4, hw_load=loader.decoder.hw_load)
    (mode, hybrid, auto) = [kw["backends"] for kw in made]
    assert [b.backend_kind for b in mode] == [nv.BackendKind.HW_GPU_ONLY, nv.BackendKind.HYBRID_CPU_GPU]
    assert mode[0].load_hint == pytest.approx(0.65)
    assert mode[0].load_hint_policy == nv.LoadHintPolicy.ADAPTIVE_MINIMIZE_IDLE_TIME
    for backends in (hybrid, auto):
        assert backends[0].load_hint == 1.0 and backends[0].load_hint_policy == nv.LoadHintPolicy.FIXED
    assert all(kw["device_id"] == 0 and kw["max_num_cpu_threads"] == 2 for kw in made)


def test_the_device_path_never_reads_a_device_value_on_the_host(db_session, monkeypatch):
    """The merge, the GPU decode mode and the normalisation of a hybrid batch, run with every call that makes
    the host wait for a device value made an error (``.item()``, ``.tolist()``, ``.numpy()``, a tensor's truth
    value or number, ``nonzero``, boolean-mask indexing): on CUDA each of these is a host sync per batch."""
    from imagenet_pack.gpu.normalize import normalize
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    hybrid = build_loader(ds, 6, workers=1, gpu_share=0.5, device="cpu", persistent_workers=False)
    batches = hybrid.batches()
    raw, again = next(batches), next(batches)
    assert raw.cpu_rows == 3 and raw.staged.rows == 3  # three rows left to the device
    expected = hybrid.to_device(raw, torch.device("cpu"))

    def sync(name):
        def refuse(*args, **kwargs):
            raise AssertionError(f"Tensor.{name} in the device path: a host sync on CUDA")
        return refuse

    for name in ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, sync(name))
    for name in ("__getitem__", "__setitem__"):
        original = getattr(torch.Tensor, name)

        def checked(self, index, *rest, _original=original, _name=name):
            parts = index if isinstance(index, tuple) else (index,)
            if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
                raise AssertionError(f"boolean-mask Tensor.{_name} in the device path: a host sync on CUDA")
            return _original(self, index, *rest)
        monkeypatch.setattr(torch.Tensor, name, checked)
    images, targets = hybrid.to_device(again, torch.device("cpu"))
    normalize(images, channels_last=True)
    monkeypatch.undo()
    assert images.shape == expected[0].shape and targets.shape == expected[1].shape
    assert threading.active_count() >= 1


def test_a_share_set_while_a_worker_decodes_a_batch_applies_to_its_rows_not_yet_decoded(db_session, monkeypatch):
    """A worker stages every row, then decodes rows from the first on while the share read before each row
    leaves it more: a share raised after two rows stops it at three of six; raised past what it has done, at
    once; the rows it decoded are the CPU loader's, the rest stay staged for the device."""
    from imagenet_pack.loader.ring import BatchRing, NumberedBatch
    from imagenet_pack.read.decoders import FusedDecoder
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    ring = BatchRing(ds, 2, 6, ds.batch_shape, staged=True)
    items = [(i, 1) for i in range(6)]
    for later, expected in ((0.5, 3), (1.0, 2)):
        ring.set_share(0.0)
        decoded = []
        real = FusedDecoder.__call__

        def counting(self, *args, _real=real, _later=later, _decoded=decoded, **kwargs):
            out = _real(self, *args, **kwargs)
            _decoded.append(args[1])
            if len(_decoded) == 2:
                ring.set_share(_later)  # the main process decides, two rows into the batch
            return out
        monkeypatch.setattr(FusedDecoder, "__call__", counting)
        result = ring.__getitems__(NumberedBatch(items, 0))
        monkeypatch.setattr(FusedDecoder, "__call__", real)
        assert result.cpu_rows == expected and decoded == list(range(expected)) and not result.fallback
        images = ring.images(0).permute(0, 3, 1, 2)
        assert all(torch.equal(images[row], ds[items[row]][0]) for row in range(expected))
        assert (ring.staged(0).fields["length"][expected:6] > 0).all()


def test_a_decision_is_in_effect_within_two_delivered_batches_and_saved_where_it_was_made(db_session):
    """An "auto" share driven by an injected clock, started at 0.5 (its measured balance point): the loop's
    appetite, read from the clock, is far below what the workers carry, so the first decision (after the
    warm-up and one window) drops the share to 0. The batch the loop receives next but one is all the
    workers'; the decision is saved where the loop stood, and a resumed run starts from it."""
    from imagenet_pack.gpu.share import Segment, SharePolicy
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    loader = build_loader(ds, 2, workers=1, prefetch_factor=1, seed=3, gpu_share=0.5, device="cpu",
                          persistent_workers=False)
    ticks = iter(range(0, 10_000, 100))
    loader.policy = SharePolicy("auto", torch.device("cuda", 0), workers=1, clock=lambda: float(next(ticks)))
    loader.policy.start(cpu_row_seconds=1.0, device_row_seconds=1.0)
    splits = []
    for batch in loader.batches():
        splits.append(batch.cpu_rows)
        loader.deliver(len(batch.targets))
        loader.pinned.release(batch)
    decided = SharePolicy.WARMUP + SharePolicy.WINDOW
    assert len(splits) == 12 and splits[:decided] == [1] * decided and splits[decided + 1:] == [2]
    assert loader.policy.segments == [Segment(0, 0, 0.5), Segment(0, 2 * decided, 0.0)]
    resumed = build_loader(ds, 2, workers=1, seed=3, gpu_share="auto", device="cpu", persistent_workers=False)
    resumed.load_state_dict(loader.state_dict())
    assert resumed.gpu_share == 0.0 and resumed.ring.cpu_rows(2) == 2


def test_the_first_batch_is_split_at_the_balance_point_measured_at_start_up(db_session, monkeypatch):
    """Before the first batch an "auto" feed decodes a few records on each side: with a worker paying 20 ms a
    row and the device 10 ms, the device takes two thirds of the first batch, not none."""
    import time

    from imagenet_pack.gpu.share import SharePolicy
    from imagenet_pack.read.decoders import FusedDecoder
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    loader = build_loader(ds, 6, workers=1, seed=3, gpu_share=0.5, device="cpu", persistent_workers=False)
    loader.policy = SharePolicy("auto", torch.device("cuda", 0), workers=1)
    real_cpu = FusedDecoder.__call__
    monkeypatch.setattr(FusedDecoder, "__call__", lambda *a, **k: time.sleep(0.02) or real_cpu(*a, **k))
    # the device's pixels are not looked at here, only its time (Triton's interpreter would swamp it)
    monkeypatch.setattr(GpuBatchDecoder, "__call__", lambda self, staged, *a, **k: time.sleep(0.01 * staged.rows))
    first = next(loader.batches())
    assert loader.policy.started and loader.gpu_share == pytest.approx(2 / 3, abs=0.05)
    assert first.cpu_rows == 6 - round(6 * loader.gpu_share) == 2
