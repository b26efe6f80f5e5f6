"""What the converter reads: the ILSVRC2012 layouts people have, turned into ordered lists of items.

Read in this order: ``items`` (Item, SplitSource, read_item: the one interface to the converter),
``detect`` (which layout a path is), then one module per layout family: ``folders`` (class folders, flat
validation folders), ``devkit`` (meta.mat and the validation ground truth), ``archives`` (the official tars,
read in place), ``kaggle``; ``synsets`` holds the built-in 1000-class table.
"""
from __future__ import annotations

from .detect import LAYOUTS, detect, discover
from .items import Item, SplitSource, read_item

__all__ = ["LAYOUTS", "detect", "discover", "Item", "SplitSource", "read_item"]
