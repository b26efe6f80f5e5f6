"""The hybrid feed's share, driven by an injected clock: it starts at the balance point measured at start-up;
it is chosen from what each side can carry (the workers' cost per row, the device's, the training loop's
appetite), not from the first burst of a full queue; it applies to the next batch the workers decode; it is
revisited; every decision is saved where the loop stood, so a resumed run goes on from the share in force."""
from __future__ import annotations

import pytest
import torch

from imagenet_pack.gpu.share import Segment, SharePolicy

CUDA = torch.device("cuda", 0)
BATCH = 64


class Run:
    """A training loop of ``step`` seconds a batch fed by ``workers`` workers paying ``cpu_cost`` seconds a
    row, and a device paying ``device_cost`` a row; the workers decode each batch at the share in force just
    before it is delivered (no batch finished ahead: the case where the share matters)."""

    def __init__(self, policy: SharePolicy, *, step: float, cpu_cost: float, device_cost: float = 1e-4):
        self.policy, self.step, self.cpu_cost, self.device_cost = policy, step, cpu_cost, device_cost
        self.now, self.splits = 0.0, []
        policy.clock = lambda: self.now

    def deliver(self, batches: int, waited: float = 0.0) -> None:
        for _ in range(batches):
            cpu = BATCH - round(BATCH * self.policy.share)
            self.splits.append(cpu)
            self.policy.observe_workers(cpu, cpu * self.cpu_cost)
            if cpu < BATCH:
                self.policy.observe_device(BATCH - cpu, (BATCH - cpu) * self.device_cost)
            self.now += self.step + waited
            self.policy.observe_delivery(BATCH, waited, (0, len(self.splits) * BATCH))


def test_the_run_starts_at_the_balance_point_measured_at_start_up():
    """16 workers at 10 ms a row carry 1600 images/s, the device 3200: two thirds of each batch go to the
    device until the loop's appetite is known; a fixed share, a CPU device or a resumed run measure nothing."""
    policy = SharePolicy("auto", CUDA, workers=16)
    assert not policy.started and policy.share == 0.0
    policy.start(cpu_row_seconds=0.01, device_row_seconds=1 / 3200)
    assert policy.started and policy.segments == [Segment(0, 0, 43 / 64)]  # 2/3, rounded up to a 64th
    assert SharePolicy(0.25, CUDA, workers=4).started and SharePolicy("auto", torch.device("cpu"), workers=4).started
    resumed = SharePolicy("auto", CUDA, workers=16)
    resumed.restore({"gpu_share_segments": [[0, 0, 0.5]]})
    assert resumed.started and resumed.share == 0.5


def test_workers_that_keep_up_leave_the_gpu_alone():
    policy = SharePolicy("auto", CUDA, workers=16)
    policy.start(cpu_row_seconds=0.004, device_row_seconds=1e-4)
    run = Run(policy, step=0.05, cpu_cost=0.004)  # 16 / 0.004 = 4000 img/s against 1280 wanted
    run.deliver(40)
    assert policy.share == 0.0 and run.splits[-1] == BATCH


def test_a_full_queue_s_burst_does_not_hide_workers_that_cannot_keep_up():
    """The first deliveries come at once from a queue filled ahead (no wait at all): a share read from the
    waits would be 0; the workers' own cost says they carry 1600 of the 2560 images/s asked for."""
    policy = SharePolicy("auto", CUDA, workers=16)
    run = Run(policy, step=0.025, cpu_cost=0.01)
    run.deliver(SharePolicy.WARMUP + SharePolicy.WINDOW)
    need = 1 - 1600 / (2560 * (1 + SharePolicy.MARGIN))
    assert policy.share == pytest.approx(need, abs=1 / 64) and policy.share >= need


def test_a_decision_applies_to_the_next_batch_decoded_and_is_kept_where_the_loop_stood():
    policy = SharePolicy("auto", CUDA, workers=16)
    run = Run(policy, step=0.025, cpu_cost=0.01)
    run.deliver(SharePolicy.WARMUP + SharePolicy.WINDOW)  # the decision comes with the last delivery
    (epoch, consumed, share), = policy.segments[1:]
    assert (epoch, consumed) == (0, len(run.splits) * BATCH)
    assert run.splits == [BATCH] * len(run.splits)  # decoded before it
    run.deliver(1)
    assert run.splits[-1] == BATCH - round(BATCH * share)  # the very next batch follows it


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


def test_a_resumed_run_goes_on_from_the_share_in_force_and_keeps_the_decisions():
    first = SharePolicy("auto", CUDA, workers=16)
    run = Run(first, step=0.025, cpu_cost=0.01)
    run.deliver(SharePolicy.WARMUP + 2 * SharePolicy.WINDOW + 3)  # stopped after a decision, before the next
    state = first.state()
    resumed = SharePolicy("auto", CUDA, workers=16)
    resumed.restore(state)
    assert resumed.segments == first.segments and len(first.segments) >= 2
    assert resumed.share == first.share  # where the resumed run starts
    # the saved decisions tell how every batch delivered was split
    assert [BATCH - round(BATCH * first.share_at(0, k * BATCH)) for k in range(len(run.splits))] == run.splits


def test_fixed_shares_and_the_cpu_device():
    fixed = SharePolicy(0.25, CUDA, workers=4)
    run = Run(fixed, step=0.001, cpu_cost=0.1)
    run.deliver(40)
    assert run.splits == [48] * 40 and fixed.segments == [Segment(0, 0, 0.25)]
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
