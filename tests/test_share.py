"""The hybrid feed's share, driven by an injected clock: it is chosen from what each side can carry (the
workers' cost per row, the device's, the training loop's appetite), not from the first burst of a full
queue; it applies from the first batch not yet dispatched; it is revisited; every decision is saved, so a
resumed run splits each batch as the uninterrupted one did."""
from __future__ import annotations

import pytest
import torch

from imagenet_pack.gpu.share import Segment, SharePolicy

CUDA = torch.device("cuda", 0)
BATCH = 64


class Run:
    """A training loop of ``step`` seconds a batch fed by ``workers`` workers paying ``cpu_cost`` seconds a
    row, and a device paying ``device_cost`` a row; the loader dispatches ``ahead`` batches ahead."""

    def __init__(self, policy: SharePolicy, *, step: float, cpu_cost: float, device_cost: float = 1e-4,
                 ahead: int = 16, workers: int = 16):
        self.policy, self.step, self.cpu_cost, self.device_cost = policy, step, cpu_cost, device_cost
        self.ahead, self.workers, self.now, self.dispatched, self.splits = ahead, workers, 0.0, 0, []
        policy.clock = lambda: self.now
        for _ in range(ahead):
            self._dispatch()

    def _dispatch(self) -> None:
        cpu = self.policy.cpu_rows(0, self.dispatched * BATCH, BATCH)
        self.splits.append(cpu)
        self.dispatched += 1

    def deliver(self, batches: int, waited: float = 0.0) -> None:
        for _ in range(batches):
            k = len(self.splits) - self.ahead  # the batch delivered now
            cpu = self.splits[k]
            self.policy.observe_workers(cpu, cpu * self.cpu_cost)
            if cpu < BATCH:
                self.policy.observe_device(BATCH - cpu, (BATCH - cpu) * self.device_cost)
            self.now += self.step + waited
            self.policy.observe_delivery(BATCH, waited)
            self._dispatch()


def test_workers_that_keep_up_leave_the_gpu_alone():
    policy = SharePolicy("auto", CUDA, workers=16)
    Run(policy, step=0.05, cpu_cost=0.004).deliver(40)  # 16 / 0.004 = 4000 img/s against 1280 wanted
    assert policy.segments == [Segment(0, 0, 0.0)] and policy.share == 0.0


def test_a_full_queue_s_burst_does_not_hide_workers_that_cannot_keep_up():
    """The first deliveries come at once from a queue filled ahead (no wait at all): a share read from the
    waits would be 0; the workers' own cost says they carry 1600 of the 2560 images/s asked for."""
    policy = SharePolicy("auto", CUDA, workers=16)
    run = Run(policy, step=0.025, cpu_cost=0.01)
    run.deliver(SharePolicy.WARMUP + SharePolicy.WINDOW)
    need = 1 - 1600 / (2560 * (1 + SharePolicy.MARGIN))
    assert policy.share == pytest.approx(need, abs=1 / 64) and policy.share >= need


def test_a_decision_applies_from_the_first_batch_not_yet_dispatched():
    policy = SharePolicy("auto", CUDA, workers=16)
    run = Run(policy, step=0.025, cpu_cost=0.01, ahead=16)
    run.deliver(SharePolicy.WARMUP + SharePolicy.WINDOW)  # the decision comes with the last delivery ...
    dispatched = len(run.splits) - 1  # ... when this many batches were dispatched already (16 ahead of it)
    (epoch, consumed, share), = policy.segments[1:]
    assert (epoch, consumed) == (0, dispatched * BATCH) and dispatched > SharePolicy.WARMUP + SharePolicy.WINDOW
    assert run.splits[:dispatched] == [BATCH] * dispatched  # those keep the split they were dispatched with
    assert run.splits[dispatched] == BATCH - round(BATCH * share)  # the next one takes the new share


def test_the_share_is_revisited_when_the_loop_slows_down():
    policy = SharePolicy("auto", CUDA, workers=16)
    run = Run(policy, step=0.025, cpu_cost=0.01)
    run.deliver(SharePolicy.WARMUP + 3 * SharePolicy.WINDOW)
    busy = policy.share
    run.step = 0.08  # a bigger model: 800 images/s wanted, the workers carry 1600
    run.deliver(3 * SharePolicy.WINDOW)
    assert busy > 0.3 and policy.share == 0.0 and len(policy.segments) >= 3


def test_the_device_never_gets_more_than_it_can_carry():
    """Workers and device together cannot feed the loop: the share balances them, so neither waits on the
    other, rather than overloading the slower device."""
    policy = SharePolicy("auto", CUDA, workers=8)
    run = Run(policy, step=0.01, cpu_cost=0.01, device_cost=1 / 1600)  # 800 + 1600 img/s against 6400 wanted
    run.deliver(SharePolicy.WARMUP + 3 * SharePolicy.WINDOW)
    assert policy.share == pytest.approx(1600 / (800 + 1600), abs=1 / 64)


def test_a_resume_between_decisions_splits_every_batch_as_the_uninterrupted_run():
    first = SharePolicy("auto", CUDA, workers=16)
    run = Run(first, step=0.025, cpu_cost=0.01)
    run.deliver(SharePolicy.WARMUP + 2 * SharePolicy.WINDOW + 3)  # stopped after a decision, before the next
    state = first.state()
    resumed = SharePolicy("auto", CUDA, workers=16)
    resumed.restore(state)
    assert resumed.segments == first.segments
    assert [resumed.cpu_rows(0, k * BATCH, BATCH) for k in range(len(run.splits))] == run.splits
    assert SharePolicy("auto", CUDA, workers=16).cpu_rows(0, len(run.splits) * BATCH, BATCH) == BATCH  # (fresh)


def test_fixed_shares_and_the_cpu_device():
    assert SharePolicy(0.25, CUDA, workers=4).cpu_rows(3, 1000, 64) == 48
    cpu = SharePolicy("auto", torch.device("cpu"), workers=4)  # the "device" is the workers' own cores
    Run(cpu, step=0.001, cpu_cost=0.1).deliver(40)
    assert cpu.segments == [Segment(0, 0, 0.0)]


@pytest.mark.parametrize("segments", [[[0, 0, 1.5]], [[0, 0, 0.5], [0, -3, 0.2]], [[1, 0, 0.5]], "x", [],
                                      [[0, 0, 0.5], [0, 10, "auto"]], [[0, 0, 0.5, 1]],
                                      [[0, 0, 0.5], [2, 0, 0.1], [1, 5, 0.2]]])
def test_a_malformed_saved_share_is_refused_in_one_line(segments):
    with pytest.raises(ValueError) as error:
        SharePolicy("auto", CUDA, workers=4).restore({"gpu_share_segments": segments})
    assert "\n" not in str(error.value) and "gpu_share" in str(error.value)


@pytest.mark.parametrize("share", [-0.1, 1.01, "half", None, True])
def test_a_share_out_of_range_is_refused(share):
    with pytest.raises(ValueError, match="gpu_share must be a share from 0 to 1"):
        SharePolicy(share, CUDA, workers=4)
