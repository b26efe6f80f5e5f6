"""How much of each batch the device decodes: a share chosen from what each side can carry, revisited during the
run, every decision saved.

A share s sends the last ``round(s * N)`` rows of each batch to the device; the workers decode the rest. With
``"auto"`` (on a CUDA device) :class:`SharePolicy` measures, over a window of recent batches:

* what a row costs the workers: their own decode time, sent back with each batch; ``W`` workers then carry
  ``C_cpu = W / cost`` images a second;
* what a row costs the device stage: ``C_dev = 1 / cost`` (unbounded until it has decoded any);
* what the training loop asks for: ``D``, images per second if data never lacked (a batch over the time
  between two deliveries, less the time the loop waited for it).

If the workers alone carry ``D`` with a margin, the share is 0 (the GPU stays free for training); else it is
the smallest that lets them keep up, ``1 - C_cpu / (D (1 + margin))``, and never past the point where the
device becomes the slower side, ``C_dev / (C_cpu + C_dev)``. Nothing is read from the first burst of a
queue filled ahead: costs are measured where they are paid, not inferred from waits. Before the first batch
(:meth:`SharePolicy.start`) the loader measures both costs on a few records, and the run starts at that
balance point, where the two sides together feed the most, not at 0; the first decision then lowers it to
what the loop asks for.

A decision takes effect at once: the workers read the share before each row they decode
(:class:`~imagenet_pack.loader.ring.BatchRing`), so every row not yet decoded follows it; only batches the
workers finished ahead of the loop keep the split they were made with. Each decision is kept as a segment
``(epoch, consumed, share)``, where the training loop stood when it was made: :meth:`SharePolicy.state` saves
them, and a resumed "auto" run starts from the share in force where it stopped. A fixed share splits every
batch the same way in any run (so a resumed run's pixels are those of the uninterrupted run); given to a
resumed run it wins from the resumed position on (a warning says so when it differs from the saved one). The
split never changes which samples or crops a batch holds.
"""
from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..contract.format import checked_int
from .device import is_cuda


class Segment(NamedTuple):
    """From the batch at (``epoch``, ``consumed``) on, ``share`` of each batch goes to the device."""

    epoch: int
    consumed: int
    share: float


def check_share(share: float | str) -> float | str:
    """``share`` if it is a number from 0 to 1 or "auto", else ValueError in one line."""
    if share != "auto" and not (isinstance(share, (int, float)) and not isinstance(share, bool)
                                and 0.0 <= share <= 1.0):
        raise ValueError(f"gpu_share must be a share from 0 to 1, or 'auto'; got {share!r}")
    return share


class SharePolicy:
    """The share of ``size``-row batches decoded on ``device`` (see the module docstring); ``workers`` is the
    loader's worker count, ``clock`` the time source (injected by tests)."""

    WARMUP, WINDOW, MARGIN, STEPS = 2, 8, 0.1, 64  # deliveries ignored, deliveries per decision, margin, 1/STEPS

    def __init__(self, share: float | str, device: torch.device, workers: int,
                 clock: Callable[[], float] = time.perf_counter):
        check_share(share)
        self.given = share
        self.auto = share == "auto" and is_cuda(device)  # on a CPU device the "device" is the workers' cores
        self.segments = [Segment(0, 0, 0.0 if share == "auto" else float(share))]
        self.workers, self.clock = max(1, workers), clock
        self.started = not self.auto  # a fixed share needs no measurement
        self._deliveries = 0
        self._last: float | None = None
        self._lock = threading.Lock()
        self._window = {"samples": 0, "seconds": 0.0, "cpu_rows": 0, "cpu_seconds": 0.0, "device_rows": 0,
                        "device_seconds": 0.0}

    @property
    def share(self) -> float:
        """The share decided last."""
        return self.segments[-1].share

    def share_at(self, epoch: int, at: int) -> float:
        """The share in force when the training loop stood at sample ``at`` of ``epoch``."""
        return next(s.share for s in reversed(self.segments) if (s.epoch, s.consumed) <= (epoch, at))

    def start(self, cpu_row_seconds: float, device_row_seconds: float) -> None:
        """Start from the balance point of what a worker and the device were measured to pay per row."""
        self.started = True
        cpu = self.workers / max(cpu_row_seconds, 1e-9)
        device = 1 / max(device_row_seconds, 1e-9)
        self.segments = [Segment(*self.segments[-1][:2], self._steps(device / (cpu + device)))]

    def observe_workers(self, rows: int, seconds: float) -> None:
        """The workers decoded ``rows`` rows of a batch in ``seconds``."""
        with self._lock:
            self._window["cpu_rows"] += rows
            self._window["cpu_seconds"] += seconds

    def observe_device(self, rows: int, seconds: float) -> None:
        """The device stage decoded ``rows`` rows in ``seconds``."""
        with self._lock:
            self._window["device_rows"] += rows
            self._window["device_seconds"] += seconds

    def observe_delivery(self, samples: int, waited: float, at: tuple[int, int]) -> None:
        """The training loop received ``samples`` after waiting ``waited`` seconds for them, and now stands at
        (epoch, samples of it the job consumed) ``at``."""
        now = self.clock()
        self._deliveries += 1
        with self._lock:  # the workers' and the device's costs are told from the look-ahead's threads
            if self._last is not None and self._deliveries > self.WARMUP:
                self._window["samples"] += samples
                self._window["seconds"] += max(now - self._last - waited, 1e-9)
            self._last = now
            if self.auto and self._deliveries > self.WARMUP and (self._deliveries - self.WARMUP) % self.WINDOW == 0:
                self._decide(at)

    def _steps(self, share: float) -> float:
        return math.ceil(share * self.STEPS - 1e-9) / self.STEPS

    def _decide(self, at: tuple[int, int]) -> None:
        w = self._window
        if w["samples"] and w["cpu_rows"]:
            demand = w["samples"] / w["seconds"]
            cpu = self.workers * w["cpu_rows"] / max(w["cpu_seconds"], 1e-9)
            device = w["device_rows"] / max(w["device_seconds"], 1e-9) if w["device_rows"] else math.inf
            if cpu >= demand * (1 + self.MARGIN):
                share = 0.0
            else:
                balance = 1.0 if math.isinf(device) else device / (cpu + device)
                share = min(1 - cpu / (demand * (1 + self.MARGIN)), balance)
            share = self._steps(share)
            if share != self.share:
                self.segments.append(Segment(*at, share))
        self._window = dict.fromkeys(self._window, 0)

    def state(self) -> dict:
        return {"gpu_share_segments": [list(s) for s in self.segments]}

    def restore(self, state: dict) -> None:
        """Take the decisions of a saved run; ValueError in one line for a malformed state."""
        if "gpu_share_segments" not in state:
            return
        segments = state["gpu_share_segments"]
        if not isinstance(segments, list) or not segments:
            raise ValueError(f"loader state's gpu_share_segments is {segments!r}, not a list of [epoch, consumed, "
                             "share]")
        restored = []
        for item in segments:
            if not isinstance(item, (list, tuple)) or len(item) != 3:
                raise ValueError(f"loader state's gpu_share segment {item!r} is not [epoch, consumed, share]")
            epoch = checked_int(item[0], "gpu_share segment epoch")
            consumed = checked_int(item[1], "gpu_share segment consumed")
            if type(item[2]) not in (int, float) or not 0.0 <= item[2] <= 1.0:
                raise ValueError(f"loader state's gpu_share segment {item!r}: its share is not from 0 to 1")
            restored.append(Segment(epoch, consumed, float(item[2])))
        if restored != sorted(restored) or restored[0][:2] != (0, 0):
            raise ValueError("loader state's gpu_share segments do not start at (0, 0) in order")
        self.segments, self.started = restored, True
        if self.given == "auto":  # the saved decisions stand, and new ones follow them
            return
        # a share given now wins from the resumed position on (the split never changes samples or crops)
        at = (checked_int(state.get("epoch", 0), "epoch"), checked_int(state.get("consumed", 0), "consumed"))
        before = self.share_at(*at)
        if before != float(self.given):
            warnings.warn(f"gpu_share {self.given} given now replaces the resumed run's {before} from epoch {at[0]}, "
                          f"sample {at[1]} on", stacklevel=3)
        self.segments = [s for s in restored if (s.epoch, s.consumed) < at] + [Segment(*at, float(self.given))]
