"""The device a feed runs on, in one place: which one it is, whether it is CUDA, its streams and events, pinned
memory. Every module of the device side asks here; on a CPU device the same calls are plain no-ops, so the
CPU tests drive the code CUDA runs.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import torch

Event = torch.cuda.Event


def resolve_device(device: torch.device | str) -> torch.device:
    """``device`` with its index: "cuda" is the current CUDA device of this process (a rank's own GPU once
    ``torch.cuda.set_device`` ran), not GPU 0."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def pins(device: torch.device) -> bool:
    """Whether host memory bound for ``device`` is pinned (page-locked): for a CUDA device that this process
    can use, so copies to it are asynchronous."""
    return is_cuda(device) and torch.cuda.is_available()


def host_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised host tensor for copies to ``device``: pinned where that helps (:func:`pins`)."""
    return torch.empty(shape, dtype=dtype, pin_memory=pins(device))


def new_stream(device: torch.device) -> torch.cuda.Stream | None:
    """A CUDA stream of its own on ``device`` (None on a CPU device)."""
    return torch.cuda.Stream(device=device) if is_cuda(device) else None


def stream_handle(device: torch.device) -> int:
    """The current stream of ``device`` as the integer C libraries take (0 on a CPU device)."""
    return torch.cuda.current_stream(device).cuda_stream if is_cuda(device) else 0


def on_device(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Make ``device`` the calling thread's current CUDA device (nothing on a CPU device): a new thread starts on
    GPU 0, whichever GPU its process's rank uses."""
    return torch.cuda.device(device) if is_cuda(device) else contextlib.nullcontext()


@contextlib.contextmanager
def on_stream(device: torch.device, stream: torch.cuda.Stream | None) -> Iterator[None]:
    """Make ``device`` and ``stream`` current (nothing on a CPU device)."""
    if stream is None:
        yield
        return
    with torch.cuda.device(device), torch.cuda.stream(stream):
        yield


def record_event(device: torch.device) -> Event | None:
    """An event recorded on ``device``'s current stream: the work queued so far (None on a CPU device,
    where that work is already done)."""
    if not is_cuda(device):
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event


def cuda_available() -> bool:
    """Whether this process can use a CUDA device."""
    return torch.cuda.is_available()


def default_device() -> str:
    """"cuda" where a CUDA device is usable, else "cpu"."""
    return "cuda" if cuda_available() else "cpu"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if is_cuda(device) else "cpu"


def device_count() -> int:
    return torch.cuda.device_count() if cuda_available() else 0


def use_device(device: torch.device) -> None:
    """Make ``device`` this process's current CUDA device (a rank's own GPU); nothing on a CPU device."""
    if is_cuda(device):
        torch.cuda.set_device(device)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on a CPU device)."""
    if is_cuda(device):
        torch.cuda.synchronize(device)


def wait_for(device: torch.device, event: Event | None, tensors: tuple[torch.Tensor, ...] = ()) -> None:
    """Make ``device``'s current stream wait for ``event`` (queued work, no host wait) and mark ``tensors`` as
    used on it, so the caching allocator never hands their memory to other work while that stream reads them."""
    if event is None:
        return
    current = torch.cuda.current_stream(device)
    current.wait_event(event)
    for tensor in tensors:
        tensor.record_stream(current)


@contextlib.contextmanager
def sync_debug(device: torch.device, mode: str) -> Iterator[None]:
    """Within the block, every operation that makes the host wait for ``device`` raises ("error"), warns
    ("warn"), or passes ("off"); nothing on a CPU device."""
    if not is_cuda(device) or mode == "off":
        yield
        return
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def track_peak_memory(device: torch.device) -> None:
    """Start measuring the peak of memory allocated on ``device`` from now."""
    if is_cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    """Bytes allocated on ``device`` at the peak since :func:`track_peak_memory` (None on a CPU device)."""
    return torch.cuda.max_memory_allocated(device) if is_cuda(device) else None


def timed(clock: StageClock | None, stage: str) -> contextlib.AbstractContextManager[None]:
    """``clock(stage)`` where a clock is attached, else nothing."""
    return clock(stage) if clock is not None else contextlib.nullcontext()


def host_timed(clock: StageClock | None, stage: str) -> contextlib.AbstractContextManager[None]:
    """``clock.host(stage)`` where a clock is attached, else nothing."""
    return clock.host(stage) if clock is not None else contextlib.nullcontext()


class StageClock:
    """Time per named stage of device work: CUDA events around each stage, read only once the device has
    passed them (never waited for while the work runs), on a GPU; wall time on a CPU device, where the work is
    done when the call returns. ``clock("decode")`` is a context manager around one stage's work;
    ``clock.host("pinned")`` around host work, timed by the wall clock on any device. Stages may be timed from
    several threads."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._pending: list[tuple[str, Event, Event]] = []
        self._ready: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def host(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self._add(stage, time.perf_counter() - started)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if not is_cuda(self.device):
            with self.host(stage):
                yield
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(torch.cuda.current_stream(self.device))
        yield
        end.record(torch.cuda.current_stream(self.device))
        self._pending.append((stage, start, end))

    def _add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
            self.counts[stage] = self.counts.get(stage, 0) + 1
            self._ready.append((stage, seconds))

    def done(self) -> list[tuple[str, float]]:
        """(stage, seconds) of each timed call the device has finished since last asked, in order, without
        waiting."""
        while self._pending and self._pending[0][2].query():
            stage, start, end = self._pending.pop(0)
            self._add(stage, start.elapsed_time(end) / 1000)
        with self._lock:
            out, self._ready = self._ready, []
        return out

    def per_call(self) -> dict[str, float]:
        """Mean seconds per timed call of each stage so far (waits for the device to pass what is queued)."""
        for _, _, end in self._pending:
            end.synchronize()
        self.done()
        return {stage: self.seconds[stage] / self.counts[stage] for stage in self.seconds}
