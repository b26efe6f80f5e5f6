"""Facts about the machine that sizes defaults: how many cores this process may use."""
from __future__ import annotations

import os


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, e.g. Linux; else all)."""
    if hasattr(os, "sched_getaffinity"):  # Linux; not macOS or Windows
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
