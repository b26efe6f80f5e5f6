"""Recognise which input layout a source path is, and build its splits.

=============  ===========================================================================================
``folders``    ``ROOT/train/<wnid>/*``, ``ROOT/val/<wnid>/*`` (torchvision ImageFolder / ImageNet layout)
``devkit``     ``ROOT/train/<wnid>/*``, flat ``ROOT/val/ILSVRC2012_val_*.JPEG`` and the devkit beside them
               (``ILSVRC2012_devkit_t12.tar.gz`` or its extracted folder)
``archives``   ``ROOT/ILSVRC2012_img_train.tar``, ``ROOT/ILSVRC2012_img_val.tar``,
               ``ROOT/ILSVRC2012_devkit_t12.tar.gz``, read in place
``kaggle``     ``ROOT/ILSVRC/Data/CLS-LOC/{train,val}``, ``ROOT/LOC_val_solution.csv``,
               ``ROOT/LOC_synset_mapping.txt``
=============  ===========================================================================================

One class list per database, the same in every split: with a devkit or Kaggle's mapping its 1000 wnids, sorted
(torchvision's target order), even when only some classes have images; for a plain class-folder tree the
sorted union of the class folders of train/ and val/ (ImageFolder's list when both hold every class).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import LayoutError
from .archives import TRAIN_TAR, VAL_TAR, train_from_tar, val_from_tar
from .devkit import find_devkit, load_devkit
from .folders import discover_folders, flat_val, folder_entries, is_flat, scan_class_folders, val_number
from .items import SplitSource
from .kaggle import KAGGLE_DATA, kaggle_splits

LAYOUTS = ("auto", "folders", "devkit", "archives", "kaggle")


def detect(src: Path) -> str:
    """The layout of ``src``; LayoutError listing what was expected when none matches."""
    if not src.exists():
        raise LayoutError(f"{src}: input does not exist")
    if not src.is_dir():
        raise LayoutError(f"{src}: is a file, not a folder; SRC is the folder that holds train/ and val/ (or the "
                          "official tars, or Kaggle's ILSVRC/)")
    if src.name in ("train", "val") and any(_looks_like_class(p.name) for p in _some_entries(src)):
        raise LayoutError(f"{src}: is a split folder itself (it holds class folders); give its parent, "
                          f"{src.parent}, as SRC (the splits are taken from there; --splits chooses)")
    if src.is_dir():
        if (src / TRAIN_TAR).is_file() or (src / VAL_TAR).is_file():
            return "archives"
        if (src / KAGGLE_DATA).is_dir():
            return "kaggle"
        if is_flat(src / "val"):
            return "devkit"
        if (src / "train").is_dir() or (src / "val").is_dir():
            return "folders"
    seen = sorted(p.name for p in src.iterdir())[:10] if src.is_dir() else [src.name]
    raise LayoutError(
        f"{src}: no known ImageNet layout; expected train/<wnid>/ and val/<wnid>/ class folders, or a flat "
        f"val/ with the devkit, or {TRAIN_TAR} + {VAL_TAR} + devkit, or Kaggle's {KAGGLE_DATA}/; saw {seen}"
    )


def _looks_like_class(name: str) -> bool:
    """A WordNet id: n followed by eight digits."""
    return len(name) == 9 and name[0] == "n" and name[1:].isdigit()


def _some_entries(folder: Path, count: int = 50) -> list[Path]:
    entries = []
    for entry in folder.iterdir():
        entries.append(entry)
        if len(entries) >= count:
            break
    return entries


def discover(src: Path, splits: tuple[str, ...], layout: str = "auto") -> tuple[dict[str, SplitSource], list[str]]:
    """The requested splits of ``src`` and notes on what was found or skipped."""
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    src = Path(src)
    if layout == "auto":
        layout = detect(src)
    if layout == "folders":
        found, notes = discover_folders(src, splits)
    else:
        builders = {"devkit": _devkit_splits, "archives": _archive_splits, "kaggle": kaggle_splits}
        found, notes = {}, []
        for split, build in builders[layout](src).items():
            if split not in splits:
                continue
            if build is None:
                notes.append(f"{src}: no {split} data found, split '{split}' skipped")
            else:
                found[split] = build()
        if not found:
            raise LayoutError(f"{src}: {layout} layout, but none of the splits {', '.join(splits)} is there")
    return found, [f"{src}: {layout} layout"] + notes


def _need_devkit(src: Path):
    path = find_devkit(src)
    if path is None:
        raise LayoutError(f"{src}: flat validation images need the devkit; place ILSVRC2012_devkit_t12.tar.gz "
                          f"(or its extracted folder) in {src}")
    return load_devkit(path)


def _devkit_splits(src: Path) -> dict:
    devkit = _need_devkit(src)
    wnids = devkit.wnids
    val_dir = src / "val"

    def val() -> SplitSource:
        if not is_flat(val_dir):
            raise LayoutError(f"{val_dir}: holds class folders (or no images), not the flat "
                              "ILSVRC2012_val_*.JPEG files the devkit layout labels; for class folders use "
                              "--layout folders, or leave --layout out to detect the layout")
        entries, ignored = folder_entries(val_dir)
        return flat_val("val", entries, lambda n: devkit.val_wnid(val_number(n, str(val_dir)), n), wnids,
                        devkit.names, f"flat validation folder {val_dir}/ labelled by {devkit.where}", ignored)

    return {
        "train": (lambda: _with_counts(scan_class_folders(src / "train", "train", wnids, devkit.names),
                                       devkit.train_counts)) if (src / "train").is_dir() else None,
        "val": val if val_dir.is_dir() else None,
    }


def _archive_splits(src: Path) -> dict:
    devkit = _need_devkit(src)
    wnids = devkit.wnids
    train, val = src / TRAIN_TAR, src / VAL_TAR
    return {
        "train": (lambda: train_from_tar(train, wnids, devkit.names, devkit.train_counts)) if train.is_file() else None,
        "val": (lambda: val_from_tar(val, lambda n: devkit.val_wnid(val_number(n, str(val)), n), wnids,
                                     devkit.names)) if val.is_file() else None,
    }


def _with_counts(source: SplitSource, counts: dict[str, int]) -> SplitSource:
    source.expected_counts = counts
    return source
