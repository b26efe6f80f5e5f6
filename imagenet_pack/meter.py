"""A progress meter for long commands: tqdm's bar on a terminal, a plain line every ``interval`` seconds
elsewhere (a log file, a CI job, a terminal too narrow for a bar, which tqdm would draw as nothing), so
progress is visible either way. Rates count this run's work only (a resumed run starts where it left off)."""
from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

MIN_COLUMNS = 20  # narrower than this (0 on some pseudo-terminals), progress is printed as lines


def _columns() -> int:
    """The width of the terminal on stderr as it reports it (0 when it reports none: plain progress lines then;
    ``shutil.get_terminal_size`` would say 80)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 0


class ProgressMeter:
    """``update(n)`` as work is done; ``close()`` at the end (prints the final count off a terminal)."""

    def __init__(self, total: int, desc: str, unit: str, *, enabled: bool = True, initial: int = 0,
                 interval: float = 10.0):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.done, self.initial, self.started, self.last = initial, initial, time.perf_counter(), time.perf_counter()
        self.enabled, self.bar = enabled, None
        if enabled and sys.stderr.isatty() and _columns() >= MIN_COLUMNS:
            self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, smoothing=0.1)

    def update(self, n: int = 1, note: str | None = None) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if note:
                self.bar.set_postfix_str(note, refresh=False)
        elif self.enabled and time.perf_counter() - self.last >= self.interval:
            self._line(note)

    def _line(self, note: str | None) -> None:
        self.last = now = time.perf_counter()
        rate = (self.done - self.initial) / max(now - self.started, 1e-9)  # this run's work only
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        print(f"{self.desc}: {self.done}/{self.total} {self.unit}{share}, {rate:.0f} {self.unit}/s"
              + (f", {note}" if note else ""), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.total:
            self._line(None)
