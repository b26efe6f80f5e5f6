"""Kaggle's ImageNet layout: ``ILSVRC/Data/CLS-LOC/{train,val}``, ``LOC_val_solution.csv`` (labels of the
flat validation folder) and ``LOC_synset_mapping.txt`` (the class list and names)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import LayoutError
from .folders import flat_val, folder_entries, scan_class_folders
from .items import SplitSource, read_side_file
from .synsets import builtin_names, parse_synset_mapping

KAGGLE_DATA = Path("ILSVRC/Data/CLS-LOC")
# Kaggle's LOC_synset_mapping.txt is 31 KB and LOC_val_solution.csv a few MB: past these, it is not theirs
MAPPING_MAX, SOLUTION_MAX = 1 << 20, 64 << 20


def kaggle_splits(src: Path) -> dict:
    """Split name -> a function building it (None where the split is absent)."""
    mapping = src / "LOC_synset_mapping.txt"
    try:
        names = parse_synset_mapping(read_side_file(mapping, MAPPING_MAX, "synset mapping").decode("utf-8")) \
            if mapping.exists() else builtin_names()
    except UnicodeDecodeError as exc:
        raise LayoutError(f"{mapping}: not a UTF-8 text file ({exc})") from exc
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

        entries, ignored = folder_entries(data / "val")
        return flat_val("val", entries, label, wnids, names,
                        f"Kaggle validation folder {data / 'val'}/ labelled by {solution}", ignored)

    return {
        "train": (lambda: scan_class_folders(data / "train", "train", wnids, names))
        if (data / "train").is_dir() else None,
        "val": val if (data / "val").is_dir() else None,
    }


def _kaggle_labels(path: Path) -> dict[str, str]:
    """ImageId -> wnid: the first token of PredictionString (``wnid xmin ymin xmax ymax ...``)."""
    try:
        text = read_side_file(path, SOLUTION_MAX, "validation solution CSV").decode("utf-8")
        with io.StringIO(text, newline="") as handle:
            rows = csv.DictReader(handle)
            if rows.fieldnames is None or not {"ImageId", "PredictionString"} <= set(rows.fieldnames):
                raise LayoutError(f"{path}: expected the columns ImageId,PredictionString")
            labels = {}
            for row in rows:
                tokens = (row["PredictionString"] or "").split()
                if not tokens:
                    raise LayoutError(f"{path}: row {row['ImageId']} has an empty PredictionString")
                labels[row["ImageId"]] = tokens[0]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LayoutError(f"{path}: not a readable CSV file ({exc})") from exc
    return labels
