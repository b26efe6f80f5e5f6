"""The benchmarks' input: a class-folder tree made from a flat folder of real ``<wnid>_*.JPEG`` files
(``--images``, e.g. ../shared/imagenet-sample), or a generated ImageNet-like sample."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2

from imagenet_pack.sample import make_sample_tree


def source_tree(images: Path | None, out: Path, copies: int, *, reencode: bool, sample_per_class: int) -> Path:
    """``out/train/<wnid>/`` from ``images``: each file ``copies`` times, as byte copies (a longer epoch of
    the same photos) or, with ``reencode``, as the original plus ``copies - 1`` re-encodes at q95, q94, ...
    (distinct files of real-photo content, like acceptance check 03). Without ``images``: a generated sample
    of 20 classes x ``sample_per_class``."""
    if images is None:
        return make_sample_tree(out, classes=20, train_per_class=sample_per_class, val_per_class=1)
    files = sorted(images.glob("*.JPEG"))
    if not files:
        raise SystemExit(f"{images}: no *.JPEG files (expected a flat folder of <wnid>_*.JPEG)")
    for f in files:
        wnid = f.name.split("_")[0]
        folder = out / "train" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, folder / f"{wnid}_0_{f.name}")
        pixels = cv2.imread(str(f), cv2.IMREAD_COLOR) if reencode else None
        for k in range(1, copies):
            if reencode:
                cv2.imwrite(str(folder / f"{wnid}_{k}_{f.stem}.JPEG"), pixels, [cv2.IMWRITE_JPEG_QUALITY, 96 - k])
            else:
                shutil.copyfile(f, folder / f"{wnid}_{k}_{f.name}")
    return out
