"""Recognise which input layout a source path is, and build its splits."""
from __future__ import annotations

from pathlib import Path

from .errors import LayoutError
from .layouts import discover_folders
from .sources import SplitSource

LAYOUTS = ("auto", "folders")


def discover(src: Path, splits: tuple[str, ...], layout: str = "auto") -> tuple[dict[str, SplitSource], list[str]]:
    """The requested splits of ``src`` and notes on what was found or skipped."""
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    found, notes = discover_folders(src, splits)
    return found, [f"{src}: class-folder layout"] + notes
