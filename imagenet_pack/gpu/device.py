"""The device a feed runs on, in one place: which one it is, whether it is CUDA, its streams and events, pinned
memory. Every module of the device side asks here; on a CPU device the same calls are plain no-ops, so the
CPU tests drive the code CUDA runs.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


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
    return torch.cuda.Stream(device=device) if is_cuda(device) else None


def stream_handle(device: torch.device) -> int:
    """The current stream of ``device`` as the integer C libraries take (0 on a CPU device)."""
    return torch.cuda.current_stream(device).cuda_stream if is_cuda(device) else 0


@contextlib.contextmanager
def on_stream(device: torch.device, stream: torch.cuda.Stream | None) -> Iterator[None]:
    """Make ``device`` and ``stream`` current (nothing on a CPU device)."""
    if stream is None:
        yield
        return
    with torch.cuda.device(device), torch.cuda.stream(stream):
        yield


def record_event(device: torch.device) -> torch.cuda.Event | None:
    """An event recorded on ``device``'s current stream: the work queued so far (None on a CPU device,
    where that work is already done)."""
    if not is_cuda(device):
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event
