"""The built-in table of the 1000 ILSVRC2012 classes: wnid -> class names, in the standard 0-999 order.

``synsets.txt`` has one ``<wnid> <name>, <name>, ...`` line per class (the format of Kaggle's
``LOC_synset_mapping.txt``), sorted by wnid, so the line number is torchvision's class index, and the names
are the devkit's ``meta.mat`` words, split on ", ": exactly ``torchvision.datasets.ImageNet.classes``. (Kaggle's
file renames three classes to tell them apart: ``crane_bird``, ``maillot_1``, ``maillot_2``; this table keeps
the devkit's ``crane``, ``maillot``, ``maillot, tank suit``.) It is the one source of class names for these
1000 wnids whatever the input layout, so a database's ``classes`` do not depend on how it was downloaded.
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
    """Names for each wnid: the built-in table's (torchvision's) for the 1000 ILSVRC2012 classes, whatever
    the input says; for any other wnid the input's (``known``: a devkit's or a mapping file's), else the wnid."""
    table = builtin_names()
    known = known or {}
    return [table.get(w) or known.get(w) or (w,) for w in wnids]
