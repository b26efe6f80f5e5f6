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

With a devkit or Kaggle's mapping, the class list is its 1000 wnids, sorted (torchvision's target order), even
when only some classes have images; a plain class-folder tree uses its own sorted folder names, as ImageFolder.
"""
from __future__ import annotations

import csv
from pathlib import Path

from .archives import TRAIN_TAR, VAL_TAR, train_from_tar, val_from_tar
from .devkit import find_devkit, load_devkit
from .errors import LayoutError
from .layouts import discover_folders, flat_val, folder_entries, is_flat, scan_class_folders, val_number
from .sources import SplitSource
from .synsets import builtin_names, parse_synset_mapping

LAYOUTS = ("auto", "folders", "devkit", "archives", "kaggle")
KAGGLE_DATA = Path("ILSVRC/Data/CLS-LOC")


def detect(src: Path) -> str:
    """The layout of ``src``; LayoutError listing what was expected when none matches."""
    if not src.exists():
        raise LayoutError(f"{src}: input does not exist")
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
        builders = {"devkit": _devkit_splits, "archives": _archive_splits, "kaggle": _kaggle_splits}
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
    return {
        "train": (lambda: _with_counts(scan_class_folders(src / "train", "train", wnids, devkit.names),
                                       devkit.train_counts)) if (src / "train").is_dir() else None,
        "val": lambda: flat_val("val", folder_entries(val_dir), lambda n: devkit.val_wnid(val_number(n, str(val_dir)), n),
                                wnids, devkit.names, f"flat validation folder {val_dir}/ labelled by {devkit.where}"),
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


def _kaggle_splits(src: Path) -> dict:
    mapping = src / "LOC_synset_mapping.txt"
    names = parse_synset_mapping(mapping.read_text("utf-8")) if mapping.is_file() else builtin_names()
    wnids = sorted(names)
    data = src / KAGGLE_DATA
    solution = src / "LOC_val_solution.csv"

    def val() -> SplitSource:
        if not solution.is_file():
            raise LayoutError(f"{src}: Kaggle layout without LOC_val_solution.csv: cannot label {data / 'val'}")
        labels = _kaggle_labels(solution)

        def label(name: str) -> str:
            stem = name.rsplit(".", 1)[0]
            if stem not in labels:
                raise LayoutError(f"{solution}: no row for {stem} ({data / 'val' / name})")
            return labels[stem]

        return flat_val("val", folder_entries(data / "val"), label, wnids, names,
                        f"Kaggle validation folder {data / 'val'}/ labelled by {solution}")

    return {
        "train": (lambda: scan_class_folders(data / "train", "train", wnids, names)) if (data / "train").is_dir() else None,
        "val": val if (data / "val").is_dir() else None,
    }


def _kaggle_labels(path: Path) -> dict[str, str]:
    """ImageId -> wnid: the first token of PredictionString (``wnid xmin ymin xmax ymax ...``)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle)
        if rows.fieldnames is None or not {"ImageId", "PredictionString"} <= set(rows.fieldnames):
            raise LayoutError(f"{path}: expected the columns ImageId,PredictionString")
        labels = {}
        for row in rows:
            tokens = (row["PredictionString"] or "").split()
            if not tokens:
                raise LayoutError(f"{path}: row {row['ImageId']} has an empty PredictionString")
            labels[row["ImageId"]] = tokens[0]
    return labels


def _with_counts(source: SplitSource, counts: dict[str, int]) -> SplitSource:
    source.expected_counts = counts
    return source
