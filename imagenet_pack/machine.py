"""Facts about the machine that size defaults and label measurements."""
from __future__ import annotations

import os
import platform


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, e.g. Linux; else all)."""
    if hasattr(os, "sched_getaffinity"):  # Linux; not macOS or Windows
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_name() -> str:
    """The processor's model name (Linux's /proc/cpuinfo; ``platform.processor()`` elsewhere, which is often
    empty on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
