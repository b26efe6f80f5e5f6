"""What the benchmarks share: their input tree (real ``<wnid>_*.JPEG`` files given with ``--images``, or a
generated ImageNet-like sample), the machine and versions they ran on, and the timing helpers."""
from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path

import cv2

from imagenet_pack.bench.timing import images_per_second, standard_train_transform, timing_loader
from imagenet_pack.machine import cpu_name, default_workers
from imagenet_pack.synthetic import make_sample_tree

__all__ = ["source_tree", "machine", "write_json", "images_per_second", "standard_train_transform", "timing_loader"]


def machine(**versions: str) -> dict:
    """The machine and versions a benchmark ran on, for its JSON (pass module versions by name)."""
    return {"machine": {"cores": os.cpu_count(), "usable_cores": default_workers(),
                        "platform": platform.platform(), "cpu": cpu_name()},
            "versions": {"python": platform.python_version(), "opencv": cv2.__version__, **versions}}


def source_tree(images: Path | None, out: Path, copies: int, *, reencode: bool, sample_per_class: int) -> Path:
    """``out/train/<wnid>/`` from ``images``: each file ``copies`` times, as byte copies (a longer epoch of
    the same photos) or, with ``reencode``, as the original plus ``copies - 1`` re-encodes at q95, q94, ...
    (distinct files of real-photo content). Without ``images``: a generated sample
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


def write_json(path: Path | None, results: list[dict], **fields) -> None:
    """The benchmark's results with the machine and versions they ran on, when ``--json`` was given."""
    if path is not None:
        import torch
        import torchvision
        path.write_text(json.dumps({**machine(torch=torch.__version__, torchvision=torchvision.__version__),
                                    **fields, "results": results}, indent=2))
