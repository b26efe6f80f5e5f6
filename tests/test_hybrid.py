"""GPU decode mode and the hybrid feed, on the CPU device (the same code CUDA runs, with nvImageCodec's CPU
decoder): exact edges, float32 resampling, errors handled per image, the batch split, the share."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from imagenet_pack import CudaPrefetcher, LmdbImageNet, RandomResizedCropDecoder, build_loader
from imagenet_pack.gpu import decode as gpu_decode
from imagenet_pack.gpu.decode import GpuBatchDecoder
from imagenet_pack.gpu.hybrid import SharePolicy
from imagenet_pack.gpu.stage import resolve_device
from imagenet_pack.read.pixels import NVIMGCODEC_AVAILABLE

import helpers

needs_nvimgcodec = pytest.mark.skipif(not NVIMGCODEC_AVAILABLE, reason="nvImageCodec not installed")


@pytest.fixture(scope="module")
def photo_db(tmp_path_factory) -> Path:
    return helpers.photo_db(tmp_path_factory.mktemp("photos"), copies=2)


def _edges(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    d = (a.float() - b.float()).abs()
    return {"mean": d.mean().item(), "top": d[:, :, 0].mean().item(), "bottom": d[:, :, -1].mean().item(),
            "left": d[:, :, :, 0].mean().item(), "right": d[:, :, :, -1].mean().item()}


@pytest.mark.parametrize("backend", ["nvimgcodec", "torchvision"])
def test_gpu_decode_mode_equals_the_fused_cpu_decoder_up_to_the_edges(photo_db, backend):
    """The whole device path on a CPU device against the CPU fused decoder on the same records and plans:
    within a level on average and on every edge row and column (no zero padding from a larger image bleeds
    into a smaller one's last rows)."""
    if backend == "nvimgcodec" and not NVIMGCODEC_AVAILABLE:
        pytest.skip("nvImageCodec not installed")
    fused = LmdbImageNet(photo_db, "train", decoder=RandomResizedCropDecoder(96, seed=2, dct_scaling=False))
    items = [(i, 0) for i in range(len(fused))]
    records, plans, wheres = fused.encoded_batch(items)
    with pytest.warns(UserWarning, match="deprecated") if backend == "torchvision" else _nothing():
        decoder = GpuBatchDecoder(96, "cpu", backend=backend)
    images = decoder(records, plans, wheres)
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 96, 96)
    assert images.is_contiguous(memory_format=torch.channels_last) and decoder.fallbacks == 0
    reference = torch.stack([fused[item][0] for item in items])
    errors = _edges(images, reference)
    assert errors["mean"] <= 1.0 and max(errors.values()) <= 1.5, errors
    assert _edges(images.flip(-1), reference)["mean"] > 5, "a wrong flip or box would not pass"


def _nothing():
    import contextlib
    return contextlib.nullcontext()


def test_the_resample_runs_in_float32_whatever_the_device(photo_db, monkeypatch):
    """CUDA's kernels compute positions, weights and sums in the input's type: float16 would quantise and
    overflow on large crops, so the resample is float32 there too (checked on the path CUDA takes)."""
    seen = []
    real = F.interpolate

    def recording(x, *args, **kwargs):
        seen.append((x.dtype, kwargs.get("antialias")))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(gpu_decode.F, "interpolate", recording)
    ds = LmdbImageNet(photo_db, "train", decoder=RandomResizedCropDecoder(32, seed=1))
    records, plans, wheres = ds.encoded_batch([(0, 0), (1, 0)])
    GpuBatchDecoder(32, "cpu")(records, plans, wheres)
    assert seen == [(torch.float32, True)] * 2
    source = open(gpu_decode.__file__).read()
    assert "float16" not in source.split('"""', 2)[2] and "half" not in re.sub(r"#.*", "", source.split('"""', 2)[2])


def test_a_device_without_index_is_this_process_s_current_gpu(monkeypatch):
    """Each rank decodes on its own GPU: "cuda" resolves to the current device (set per rank), not GPU 0."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cpu") == torch.device("cpu")


@needs_nvimgcodec
def test_what_the_device_decoder_fails_on_or_returns_at_another_size_goes_to_opencv(photo_db, monkeypatch):
    ds = LmdbImageNet(photo_db, "train", decoder=RandomResizedCropDecoder(32, seed=1))
    records, plans, wheres = ds.encoded_batch([(i, 0) for i in range(4)])
    reference = GpuBatchDecoder(32, "cpu")(records, plans, wheres)
    nv, decoder, params = GpuBatchDecoder(32, "cpu")._decoder()
    real_stream = nv.CodeStream

    def picky(data):  # a header it cannot parse, for record 1
        if data == records[1].image:
            raise RuntimeError("nvImageCodec: cannot parse the header")
        return real_stream(data)

    monkeypatch.setattr(nv, "CodeStream", picky)
    guarded = GpuBatchDecoder(32, "cpu")
    assert torch.equal(guarded(records, plans, wheres), reference) and guarded.fallbacks == 1
    monkeypatch.setattr(nv, "CodeStream", real_stream)

    class Short:  # what a decoder gives back for a header that lies: one row short
        shape = (plans[2].box[2] - 1, plans[2].box[3], 3)

    class Lying:
        def decode(self, streams, **kw):
            images = decoder.decode(streams, **kw)
            images[2] = Short()
            return images

    sized = GpuBatchDecoder(32, "cpu")
    sized._nv = (nv, Lying(), params)
    assert torch.equal(sized(records, plans, wheres), reference) and sized.fallbacks == 1


@needs_nvimgcodec
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
        records, plans, wheres = ds.encoded_batch([(i, 0) for i in order[6 * b + 3:6 * b + 6]])
        assert torch.equal(images[3:], decoder(records, plans, wheres))  # the device's share
    resumed = build_loader(ds, 6, workers=2, seed=4, gpu_share=0.5, device="cpu", persistent_workers=False)
    first = next(iter(CudaPrefetcher(resumed, "cpu")))[1].tolist()
    state = resumed.state_dict()
    assert state["gpu_share"] == 0.5
    again = build_loader(ds, 6, workers=2, seed=4, gpu_share=0.5, device="cpu", persistent_workers=False)
    again.load_state_dict(state)
    assert [first] + [t.tolist() for _, t in again] == [t.tolist() for _, t in cpu_only]


def test_the_workers_are_handed_item_numbers_not_jpeg_bytes(db_session):
    """The device's share is read from LMDB by the process that decodes it: what a worker returns for a
    batch is its slot, its rows' targets and the remaining items, never image bytes."""
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    loader = build_loader(ds, 6, workers=1, gpu_share=0.5, device="cpu", persistent_workers=False)
    raw = next(iter(loader.loader.loader))
    slot, targets, rest = raw
    assert isinstance(slot, int) and len(targets) == 3 and all(isinstance(i, tuple) and len(i) == 2 for i in rest)


def test_the_auto_share_is_what_the_run_shows_fixed_from_a_known_batch_and_saved():
    """"auto" on a GPU: the first batches go to the workers alone; the share is the fraction of time the loop
    waited, plus a margin, from the first batch not yet dispatched; a resumed run restores it exactly."""
    policy = SharePolicy("auto", torch.device("cuda", 0))
    assert policy.share is None and policy.cpu_rows(0, 0, 8) == 8
    clock = iter(range(100))
    import imagenet_pack.gpu.hybrid as hybrid
    real = hybrid.time.perf_counter
    hybrid.time.perf_counter = lambda: float(next(clock))  # one second per delivery, 0.3 s of it waiting
    try:
        for k in range(SharePolicy.WARMUP + SharePolicy.WINDOW + 1):
            policy.cpu_rows(0, 8 * (k + 4), 8)  # the loader dispatches ahead of the deliveries
            policy.observe(8, 0.3)
    finally:
        hybrid.time.perf_counter = real
    assert policy.share == 23 / 64  # ceil((0.3 + 0.05) * 64) / 64
    since = policy.since
    assert since == (0, 8 * (SharePolicy.WARMUP + SharePolicy.WINDOW + 5))
    assert policy.cpu_rows(0, since[1] - 8, 8) == 8 and policy.cpu_rows(0, since[1], 8) == 8 - round(8 * 23 / 64)
    restored = SharePolicy("auto", torch.device("cuda", 0))
    restored.restore(policy.state())
    assert (restored.share, restored.since) == (policy.share, since) and restored.cpu_rows(1, 0, 8) == 8 - round(8 * 23 / 64)
    # on a CPU device the "device" is the workers' own cores: nothing to share
    assert SharePolicy("auto", torch.device("cpu")).share == 0.0


def test_nothing_in_the_loader_imports_the_device_side():
    loader_dir = Path(__file__).resolve().parent.parent / "imagenet_pack" / "loader"
    for path in loader_dir.glob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+(\.\.gpu|imagenet_pack\.gpu)", path.read_text(), re.M), path


def test_cpu_threads_of_the_workers_decoders_are_one(monkeypatch):
    if not NVIMGCODEC_AVAILABLE:
        pytest.skip("nvImageCodec not installed")
    from imagenet_pack.read import pixels
    made = []
    monkeypatch.setattr(pixels, "_NV", None)
    nv = pixels.nvimgcodec()[0]
    real = nv.Decoder
    monkeypatch.setattr(nv, "Decoder", lambda **kw: made.append(kw) or real(**kw))
    monkeypatch.setattr(pixels, "_NV", (os.getpid() + 1, None, None, None))  # as in a freshly forked worker
    pixels.nvimgcodec()
    assert made and made[0]["max_num_cpu_threads"] == 1


def test_the_device_path_never_reads_a_device_value_on_the_host(db_session, monkeypatch):
    """The merge, the GPU decode mode and the normalisation of a hybrid batch, run with every call that makes
    the host wait for a device value made an error (``.item()``, ``.tolist()``, ``.numpy()``, a tensor's truth
    value or number, ``nonzero``, boolean-mask indexing): on CUDA each of these is a host sync per batch."""
    from imagenet_pack.gpu.normalize import normalize
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    hybrid = build_loader(ds, 6, workers=1, gpu_share=0.5, device="cpu", persistent_workers=False)
    raw = next(iter(hybrid.batches()))
    assert len(raw) == 3 and len(raw[2]) == 3  # three rows left to the device
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
    images, targets = hybrid.to_device(raw, torch.device("cpu"))
    normalize(images, channels_last=True)
    monkeypatch.undo()
    assert torch.equal(images, expected[0]) and torch.equal(targets, expected[1])
