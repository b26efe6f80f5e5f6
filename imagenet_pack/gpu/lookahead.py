"""Work run ahead of the training loop on CUDA streams of its own, in background threads.

:func:`run_ahead` takes host-side batches from a loader and, in a thread of its own, turns each into device
tensors (copies, GPU decoding, normalisation: whatever ``produce`` queues), keeping up to ``depth`` batches
ready. Consecutive batches alternate between two streams, so the host work for one overlaps the device work
still queued for the one before. With ``host_depth`` the items themselves are drawn in a second thread, that
many ahead: a hybrid feed's batch k+2 is received from the workers, copied to pinned memory and made into code
streams while batch k+1 is submitted to the decoder, so the decoder never waits for that Python. Each batch is
handed to the training loop with an event: the loop's stream waits for that batch's work only, never for the
decode of later ones, and every tensor is recorded on the loop's stream, so the caching allocator never hands
its memory to the next batch while the loop still reads it. nvImageCodec, numpy's copies and torch release the
GIL while they work, so the threads run beside the training loop.

On a CPU device the same code runs (the thread, the queue, the order), without streams or events: the CPU
tests drive the code path CUDA runs. A look-ahead still running when the interpreter exits (an iterator kept
at module level) is stopped and joined first, so the process ends cleanly.
"""
from __future__ import annotations

import atexit
import queue
import threading
import time
import types
from collections.abc import Callable, Generator, Iterator
from typing import Any

import torch

from ..loader.loader import Feed, copy_batch
from .device import new_stream, on_device, on_stream, record_event, wait_for


class _End:
    pass


# every live look-ahead thread and its stop flag: stopped and joined at interpreter exit, before the
# interpreter finalises (a thread still inside torch then would abort the process)
_LIVE: dict[threading.Thread, threading.Event] = {}
JOIN_AT_EXIT_S = 30.0


@atexit.register
def _stop_all() -> None:
    for stop in list(_LIVE.values()):
        stop.set()
    for thread in list(_LIVE):
        thread.join(JOIN_AT_EXIT_S)


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def run_ahead(items: Iterator[Any], produce: Callable[[Any], tuple[torch.Tensor, ...]], device: torch.device,
              depth: int = 2, host_depth: int = 0) -> Iterator[tuple[tuple[torch.Tensor, ...], Any, float]]:
    """``(produce(item), item, seconds waited)`` for each of ``items``, in order, ``depth`` items ahead; the
    tensors are ready to use on the caller's current stream. ``host_depth`` > 0: ``items`` are drawn in a thread
    of their own, up to that many ahead of ``produce``. Leaving the loop early stops the threads (the items they
    made ahead are dropped: an :class:`~imagenet_pack.loader.loader.Feed` delivers them again)."""
    streams = [new_stream(device), new_stream(device)]
    stop = threading.Event()
    threads: list[threading.Thread] = []
    if host_depth > 0:
        items = _in_thread(_on(device, items), host_depth, stop, threads, "imagenet-pack-host")

    def produced() -> Iterator[Any]:
        try:
            with on_device(device):
                for k, item in enumerate(items):
                    with on_stream(device, streams[k % 2]):
                        out = produce(item)
                        done = record_event(device)
                    yield out, item, done
        finally:
            if isinstance(items, types.GeneratorType):  # ended in the thread that ran it
                items.close()

    try:
        for out, item, done, waited in _timed(_in_thread(produced(), depth, stop, threads, "imagenet-pack-ahead")):
            wait_for(device, done, out)
            yield out, item, waited
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def _on(device: torch.device, items: Iterator[Any]) -> Iterator[Any]:
    """``items``, drawn with ``device`` current in the thread that draws them."""
    with on_device(device):
        yield from items


def _timed(entries: Iterator[tuple]) -> Iterator[tuple]:
    """Each entry of ``entries`` with the seconds the caller waited for it appended."""
    while True:
        started = time.perf_counter()
        entry = next(entries, None)
        if entry is None:
            return
        yield (*entry, time.perf_counter() - started)


def _in_thread(items: Iterator[Any], depth: int, stop: threading.Event, threads: list[threading.Thread],
               name: str) -> Iterator[Any]:
    """``items`` drawn in a new thread (appended to ``threads``), up to ``depth`` ahead of the caller, until
    ``stop``; an error raised there is raised here, in order. A generator is closed in the thread that ran it."""
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))

    def put(entry: Any) -> None:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                put(item)
            put(_End())
        except BaseException as error:  # noqa: BLE001 - handed to the consuming thread
            put(_Failed(error))
        finally:
            if isinstance(items, types.GeneratorType):  # end it here, in the thread that ran it
                items.close()
            _LIVE.pop(threading.current_thread(), None)

    thread = threading.Thread(target=work, name=name, daemon=True)
    _LIVE[thread] = stop
    threads.append(thread)
    thread.start()

    def drawn() -> Iterator[Any]:
        while True:
            try:
                entry = ready.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if isinstance(entry, _End):
                return
            if isinstance(entry, _Failed):
                raise entry.error
            yield entry

    return drawn()


def feed_ahead(loader: Any, device: torch.device, finish: Callable[[torch.Tensor], torch.Tensor] | None = None,
               depth: int = 2) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]:
    """(images, targets) of ``loader``'s batches on ``device``, ``depth`` ahead, ``finish`` applied to the
    images on the same stream (normalisation). A :class:`Feed` (an ``EpochLoader`` or a hybrid feed) is told
    each batch the caller receives and is moved to its next epoch only when every batch was, and has its host
    batches drawn as far ahead as it asks (``host_ahead``); any other iterable of (images, targets) is copied
    as it is."""
    feed = loader if isinstance(loader, Feed) else None
    to_device = feed.to_device if feed is not None else copy_batch

    def produce(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = to_device(batch, device)
        return (finish(images) if finish is not None else images), targets

    items, host_depth = (feed.batches(), feed.host_ahead) if feed is not None else (iter(loader), 0)
    for (images, targets), _, waited in run_ahead(items, produce, device, depth, host_depth):
        if feed is not None:
            feed.deliver(len(targets), waited)
        yield images, targets
    if feed is not None:
        feed.finish_epoch()
