"""The hybrid feed's host stage, a thread of its own: each batch received from the workers, copied to a pinned
buffer and prepared for the decoder while the batch before is submitted, on the CPU device (the code CUDA
runs); its buffers never handed out while a batch in them may still be read."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from imagenet_pack import CudaPrefetcher, LmdbImageNet, RandomResizedCropDecoder, build_loader
from imagenet_pack.gpu.hybrid import HybridLoader
from imagenet_pack.gpu.pinned import PinnedBuffers


def hybrid(db, **kwargs):
    ds = LmdbImageNet(db, "train", decoder=RandomResizedCropDecoder(16, seed=2))
    return build_loader(ds, 4, workers=2, seed=5, gpu_share=0.5, device="cpu", persistent_workers=False, **kwargs)


def look_ahead_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("imagenet-pack-")]


def test_the_next_batch_is_prepared_while_one_is_submitted_and_every_batch_stays_whole(db_session, monkeypatch):
    """With each submission slowed, so the host stage runs as far ahead as it may: batches are taken in the host
    thread while the one before is being submitted in the look-ahead's, and every batch equals what the same
    feed makes with no host thread (a pinned buffer rewritten while its batch was still read would show)."""
    monkeypatch.setattr(HybridLoader, "host_ahead", 0)
    expected = [(images.clone(), targets.clone()) for images, targets in hybrid(db_session)]
    monkeypatch.setattr(HybridLoader, "host_ahead", 1)
    events: list[tuple[str, int, str]] = []
    real_take, real_to_device = PinnedBuffers.take, HybridLoader.to_device

    def take(self, ring, result):
        batch = real_take(self, ring, result)
        events.append(("take", batch.buffer, threading.current_thread().name))
        return batch

    def to_device(self, batch, device):
        events.append(("submit", batch.buffer, threading.current_thread().name))
        time.sleep(0.2)
        out = real_to_device(self, batch, device)
        events.append(("submitted", batch.buffer, threading.current_thread().name))
        return out

    monkeypatch.setattr(PinnedBuffers, "take", take)
    monkeypatch.setattr(HybridLoader, "to_device", to_device)
    got = list(hybrid(db_session))
    assert len(got) == len(expected) > 3
    for (images, targets), (want, want_targets) in zip(got, expected):
        assert torch.equal(targets, want_targets) and torch.equal(images, want)
    assert {thread for kind, _, thread in events if kind == "take"} == {"imagenet-pack-host"}
    assert {thread for kind, _, thread in events if kind != "take"} == {"imagenet-pack-ahead"}
    kinds = [kind for kind, _, _ in events]
    overlapped = [k for k in range(len(kinds) - 1) if kinds[k] == "submit" and kinds[k + 1] == "take"]
    assert len(overlapped) >= len(expected) - 2  # the next batch was taken while this one was submitted
    assert look_ahead_threads() == []


def test_a_pinned_buffer_still_held_is_never_handed_out_and_a_new_pass_frees_them(db_session):
    """Four buffers: a fifth batch taken before any was released is refused in one line (a look-ahead deeper
    than the buffers is a programming error, never a silent overwrite); the next pass starts with all free."""
    loader = hybrid(db_session)
    batches = loader.batches()
    taken = [next(batches) for _ in range(4)]
    assert sorted(batch.buffer for batch in taken) == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="pinned buffer 0 still holds a batch not released"):
        next(batches)
    again = next(loader.batches())
    assert again.buffer == 0 and torch.equal(again.targets, taken[0].targets)


def test_an_error_in_the_host_stage_reaches_the_loop_and_leaving_early_ends_both_threads(db_session, monkeypatch):
    """A failure while preparing a batch is raised in the training loop, in order, after the batches before it;
    a loop that breaks off stops the host thread and the look-ahead's, and the next pass starts with the first
    batch the loop did not receive."""
    loader, reference = hybrid(db_session), hybrid(db_session)
    order, following = ([targets.tolist() for _, targets in reference] for _ in range(2))  # epochs 0 and 1
    for images, targets in CudaPrefetcher(loader, "cpu"):
        assert targets.tolist() == order[0] and images.dtype == torch.float32
        break
    assert look_ahead_threads() == []
    assert [targets.tolist() for _, targets in CudaPrefetcher(loader, "cpu")] == order[1:]
    calls = []
    real = loader.decoder.prepare

    def failing(staged):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("prepare failed on the third batch")
        return real(staged)

    monkeypatch.setattr(loader.decoder, "prepare", failing)
    received = []
    with pytest.raises(OSError, match="third batch"):
        for _, targets in CudaPrefetcher(loader, "cpu"):
            received.append(targets.tolist())
    assert received == following[:2] and look_ahead_threads() == []
