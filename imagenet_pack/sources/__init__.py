"""What the converter reads: the ILSVRC2012 layouts people have, turned into ordered lists of items
(``items`` is the one interface to the converter). Its modules are mapped in docs/DESIGN.md."""

from __future__ import annotations

from .detect import LAYOUTS, detect, discover
from .items import Item, SplitSource, read_item

__all__ = ["LAYOUTS", "detect", "discover", "Item", "SplitSource", "read_item"]
