"""The built-in table of the 1000 ILSVRC2012 classes: wnid -> class names, in the standard 0-999 order.

``synsets.txt`` is Kaggle's ``LOC_synset_mapping.txt`` (one ``<wnid> <name>, <name>, ...`` line per class,
sorted by wnid, so the line number is torchvision's class index). It gives every database class names even
when the input carries none.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources


def parse_synset_mapping(text: str) -> dict[str, tuple[str, ...]]:
    """Parse ``<wnid> <names>`` lines (LOC_synset_mapping.txt format) into wnid -> name tuple."""
    table = {}
    for line in text.splitlines():
        if line.strip():
            wnid, _, names = line.strip().partition(" ")
            table[wnid] = tuple(name.strip() for name in names.split(","))
    return table


@lru_cache(maxsize=1)
def builtin_names() -> dict[str, tuple[str, ...]]:
    return parse_synset_mapping(resources.files(__package__).joinpath("synsets.txt").read_text("utf-8"))


def class_names(wnids: list[str], known: dict[str, tuple[str, ...]] | None = None) -> list[tuple[str, ...]]:
    """Names for each wnid: from ``known`` first, then the built-in table, else the wnid itself."""
    table = builtin_names()
    known = known or {}
    return [known.get(w) or table.get(w) or (w,) for w in wnids]
