"""The look-ahead: normalised batches made ahead on their own stream, handed over with events, counted only
when the training loop receives them, and nothing lost when the loop leaves early."""
from __future__ import annotations

import contextlib
import threading

import pytest
import torch
from torchvision import transforms

from imagenet_pack import build_loader
from imagenet_pack.gpu import IMAGENET_MEAN, IMAGENET_STD, CudaPrefetcher, lookahead, normalize


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
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(out[2][0][0, :, 0, 0], expected)


class Recording:
    """A dataset whose samples say their own index, so the batches a loop received can be checked."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        index, _ = item
        return torch.full((3, 2, 2), index % 256, dtype=torch.uint8), index


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("stop_after", [1, 4, 6])
def test_look_ahead_keeps_the_saved_position_the_training_loops(depth, stop_after):
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


def test_leaving_a_prefetcher_loop_early_loses_nothing():
    """What the look-ahead held ahead when the loop broke off is delivered by the next pass; then the next
    epoch is whole."""
    loader = build_loader(Recording(30), 4, workers=0, seed=1)
    epoch0 = [t.tolist() for _, t in CudaPrefetcher(build_loader(Recording(30), 4, workers=0, seed=1), "cpu")]
    got = []
    for _, t in CudaPrefetcher(loader, "cpu", depth=3):
        got.append(t.tolist())
        break
    got += [t.tolist() for _, t in CudaPrefetcher(loader, "cpu", depth=3)]
    assert got == epoch0 and loader.epoch == 1
    assert sum(len(t) for _, t in CudaPrefetcher(loader, "cpu")) == 28 and loader.epoch == 2


def test_an_error_in_the_look_ahead_reaches_the_training_loop():
    def broken():
        yield torch.zeros((1, 3, 2, 2), dtype=torch.uint8), torch.zeros(1, dtype=torch.int64)
        raise RuntimeError("decoder failed")

    with pytest.raises(RuntimeError, match="decoder failed"):
        list(CudaPrefetcher(broken(), "cpu"))


class FakeStream:
    """Stands for a CUDA stream: records what waits on it and which thread ran inside it."""

    def __init__(self, name: str):
        self.name, self.waited, self.cuda_stream = name, [], id(self)

    def wait_event(self, event) -> None:
        self.waited.append(event)


class FakeEvent:
    def __init__(self):
        self.recorded_on = None

    def record(self, stream) -> None:
        self.recorded_on = stream


def test_the_cuda_path_makes_batches_on_its_own_stream_and_hands_them_over_with_events(monkeypatch):
    """The code CUDA runs, with torch.cuda's stream calls recorded: every batch is produced inside one of two
    side streams' contexts, alternating (host work for one batch overlaps device work for the one before), in
    the look-ahead's thread; the training loop's stream waits on that batch's event before the loop sees it,
    and each tensor is recorded on the loop's stream (so its memory is not reused while the loop reads it)."""
    loop, side, current = FakeStream("loop"), [], threading.local()
    recorded: list = []

    def make_stream(device=None):
        side.append(FakeStream("side"))
        return side[-1]

    @contextlib.contextmanager
    def in_stream(stream):
        current.stream = stream
        yield

    monkeypatch.setattr(torch.cuda, "Stream", make_stream)
    monkeypatch.setattr(torch.cuda, "stream", in_stream)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: getattr(current, "stream", loop))
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: recorded.append((self, stream)))
    produced = []

    def produce(item):
        produced.append((item, current.stream.name, threading.current_thread().name))
        return (torch.full((2,), item), torch.tensor([item]))

    out = []
    for tensors, item, _ in lookahead.run_ahead(iter(range(5)), produce, FakeCuda(), depth=2):
        assert len(loop.waited) == item + 1 and loop.waited[-1].recorded_on is side[item % 2]  # for this one
        assert all(stream is loop for t, stream in recorded[-2:]) and recorded[-2][0] is tensors[0]
        out.append(item)
    assert out == list(range(5)) and len(side) == 2
    assert all(name == "side" and thread == "imagenet-pack-ahead" for _, name, thread in produced)


class FakeCuda:
    """A device whose type is "cuda", for running the CUDA branch of the look-ahead on a CPU machine."""

    type = "cuda"
    index = 0


def test_both_look_ahead_threads_work_on_the_feed_s_gpu_not_gpu_0(monkeypatch):
    """A thread starts on GPU 0; a rank's feed decodes on its own GPU. The host stage draws every item, and the
    look-ahead produces every batch, with the feed's device current in their threads (CUDA's calls recorded)."""
    current = threading.local()

    @contextlib.contextmanager
    def on(device):
        before, current.device = getattr(current, "device", 0), device.index
        yield
        current.device = before

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream("side"))
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "device", on)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream("loop"))
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: None)
    rank_gpu = FakeCuda()
    rank_gpu.index = 3
    drawn, made = [], []

    def items():
        for item in range(4):
            drawn.append((getattr(current, "device", 0), threading.current_thread().name))
            yield item

    def produce(item):
        made.append((getattr(current, "device", 0), threading.current_thread().name))
        return (torch.tensor([item]),)

    out = [item for _, item, _ in lookahead.run_ahead(items(), produce, rank_gpu, depth=2, host_depth=1)]
    assert out == [0, 1, 2, 3]
    assert drawn == [(3, "imagenet-pack-host")] * 4 and made == [(3, "imagenet-pack-ahead")] * 4
