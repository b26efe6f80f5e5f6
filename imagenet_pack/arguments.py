"""The argparse value types of the command line and the tools: each turns a bad value into a one-line usage
error naming what was expected. Imports nothing heavy: the command line is parsed before its Ctrl-C handler
has anything slow to interrupt."""
from __future__ import annotations

import argparse

# the demo's generated sample by default: classes, and train images per class (val gets a third)
DEMO_CLASSES, DEMO_PER_CLASS = 10, 30


def split_list(text: str) -> tuple[str, ...]:
    """Comma-separated split names, at least one."""
    splits = tuple(s for s in text.split(",") if s)
    if not splits:
        raise argparse.ArgumentTypeError("give at least one split, e.g. train,val")
    return splits


def shard_list(text: str) -> tuple[int, ...]:
    """Comma-separated shard numbers (0-based), at least one."""
    try:
        shards = tuple(int(s) for s in text.split(",") if s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected shard numbers like 0,1 or 3, got {text!r}") from None
    if not shards or min(shards) < 0:
        raise argparse.ArgumentTypeError(f"expected shard numbers like 0,1 or 3, got {text!r}")
    return shards


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a one-line usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def shard_count(text: str) -> int:
    """A shard count from 1 to the format's limit."""
    from .contract.format import MAX_SHARDS  # here, not at import: the command starts before numpy is loaded
    value = positive_int(text)
    if value > MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"at most {MAX_SHARDS} shards per split, got {value}")
    return value


def quality(text: str) -> int:
    """A JPEG quality from 1 to 100."""
    value = positive_int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be 1..100, got {value}")
    return value
