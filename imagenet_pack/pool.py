"""Worker processes that map a function over tasks and hand the results back in order; they stop at once.
Used by the converter (read and validate files) and by ``verify`` (check records).

``multiprocessing.Pool`` prints a traceback from every worker on Ctrl-C, can hang in ``terminate()`` with
results in flight, and leaves workers running when its parent is killed. These workers read and decode
files and own nothing, so stopping them is simple and immediate: they ignore SIGINT (the parent alone
handles it), die with their parent (Linux's ``PR_SET_PDEATHSIG``: a ``kill -9`` of the converter leaves no
process behind) and are SIGKILLed when the parent is done or interrupted.

Each worker has its own pair of pipes and at most two chunks of tasks outstanding, so a pipe never fills
with tasks, and the parent only ever blocks waiting for *some* result: no deadlock whatever the sizes.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

_PR_SET_PDEATHSIG = 1


class WorkerDied(RuntimeError):
    """A worker process ended while it held ``tasks`` (killed by a signal, e.g. the out-of-memory killer's
    SIGKILL, or exited): the caller says which of its inputs were in flight."""

    def __init__(self, pid: int, exitcode: int | None, tasks: list):
        self.pid, self.exitcode, self.tasks = pid, exitcode, tasks
        how = (f"was killed by signal {-exitcode} ({signal.Signals(-exitcode).name})" if exitcode and exitcode < 0
               and -exitcode in signal.valid_signals() else f"exited with code {exitcode}")
        super().__init__(f"worker process {pid} {how}")


def die_with_parent() -> None:
    """This process gets SIGKILL when its parent exits, however it exits (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _serve(tasks: Connection, results: Connection, parent: int, fn: Callable, init: Callable | None,
           initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(0)
    if init is not None:
        init(*initargs)
    while True:
        try:
            chunk = tasks.recv()
        except EOFError:
            os._exit(0)
        if chunk is None:
            os._exit(0)
        number, items = chunk
        results.send((number, [fn(item) for item in items]))


class OrderedPool:
    """``processes`` workers (forked) running ``fn``; :meth:`map` yields ``fn(task)`` in task order."""

    def __init__(self, processes: int, fn: Callable, init: Callable | None = None, initargs: tuple = (),
                 chunk: int = 8):
        context = multiprocessing.get_context("fork")
        self.chunk, self.workers = chunk, []
        for _ in range(processes):
            task_read, task_write = context.Pipe(duplex=False)
            result_read, result_write = context.Pipe(duplex=False)
            process = context.Process(target=_serve, args=(task_read, result_write, os.getpid(), fn, init, initargs),
                                      daemon=True)
            process.start()
            task_read.close()
            result_write.close()
            self.workers.append((process, task_write, result_read))

    def map(self, tasks: Iterable[Any]) -> Iterator[Any]:
        chunks = _chunks(tasks, self.chunk)
        pending: dict[int, list] = {}  # chunk number -> results, received out of order
        held: dict[int, dict[int, list]] = {i: {} for i in range(len(self.workers))}  # worker -> its chunks
        outstanding = {i: 0 for i in range(len(self.workers))}
        limit = 4 * len(self.workers)  # chunks handed out and not yet yielded
        sent = next_out = 0
        exhausted = False

        def feed() -> None:
            nonlocal sent, exhausted
            for i in sorted(outstanding, key=lambda k: outstanding[k]):
                while not exhausted and outstanding[i] < 2 and sent - next_out < limit:
                    chunk = next(chunks, None)
                    if chunk is None:
                        exhausted = True
                        return
                    self.workers[i][1].send((sent, chunk))
                    held[i][sent] = chunk
                    outstanding[i] += 1
                    sent += 1

        feed()
        by_conn = {w[2]: i for i, w in enumerate(self.workers)}
        while next_out < sent or not exhausted:
            while next_out in pending:
                yield from pending.pop(next_out)
                next_out += 1
                feed()
            if next_out >= sent and exhausted:
                break
            for conn in wait(list(by_conn)):
                assert isinstance(conn, Connection)
                i = by_conn[conn]
                try:
                    number, results = conn.recv()
                except EOFError:
                    process = self.workers[i][0]
                    process.join(1)
                    raise WorkerDied(process.pid or 0, process.exitcode,
                                     [task for _, chunk in sorted(held[i].items()) for task in chunk]) from None
                del held[i][number]
                pending[number] = results
                outstanding[i] -= 1
            feed()

    def close(self) -> None:
        """Stop every worker now (SIGKILL: they own nothing) and reap them."""
        for process, _, _ in self.workers:
            if process.is_alive():
                process.kill()
        for process, tasks, results in self.workers:
            process.join()
            tasks.close()
            results.close()
        self.workers = []

    def __enter__(self) -> OrderedPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _chunks(tasks: Iterable[Any], size: int) -> Iterator[list]:
    chunk = []
    for task in tasks:
        chunk.append(task)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
