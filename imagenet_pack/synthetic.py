"""Generate a small ImageNet-shaped tree of real JPEG files: the demo's input and the benchmarks' default.

The images look like ImageNet's to a decoder: about 500x375, 1/f ("natural") noise texture with edges and
per-class colours, encoded by OpenCV at quality 90, so a file is about 100 KB and decodes in the same time as
a real photo. Class folders use real ILSVRC2012 wnids so class names come from the built-in table.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .sources.synsets import builtin_names


def natural_image(rng: np.random.Generator, height: int, width: int, tint: np.ndarray,
                  grain: np.ndarray) -> np.ndarray:
    """An HxWx3 uint8 RGB image: smooth 1/f layers, hard-edged shapes, fine grain, a class tint.

    ``grain`` is a larger noise tile shared by all images (a random window of it is used), which keeps
    generation cheap while giving the JPEG encoder ImageNet-like high-frequency detail to spend bits on.
    """
    image = np.empty((height, width, 3), np.float32)
    image[:] = tint
    for octave in range(4):
        h, w = 3 << octave, 4 << octave
        noise = rng.standard_normal((h, w, 3)).astype(np.float32) * (60 * 0.6 ** octave)
        image += cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(3, 8))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(2, max(3, width // 3))), int(rng.integers(2, max(3, height // 3))))
        colour = tuple(float(c) for c in rng.normal(0, 50, 3))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    y, x = int(rng.integers(0, grain.shape[0] - height + 1)), int(rng.integers(0, grain.shape[1] - width + 1))
    image += grain[y:y + height, x:x + width]
    return np.clip(image, 0, 255).astype(np.uint8)


def make_sample_tree(root: str | Path, *, classes: int = 10, train_per_class: int = 30, val_per_class: int = 10,
                     size: tuple[int, int] = (375, 500), quality: int = 90, seed: int = 0) -> Path:
    """Write ``root/train/<wnid>/<wnid>_<k>.JPEG`` and ``root/val/<wnid>/ILSVRC2012_val_<n>.JPEG``.

    ``size`` is (height, width); every third image is portrait (width and height swapped), like ImageNet's mix.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    side = max(size) + 64
    grain = cv2.GaussianBlur(rng.standard_normal((side, side, 3)).astype(np.float32), (0, 0), 0.7) * 45
    wnids = sorted(builtin_names())[:: max(1, 1000 // classes)][:classes]
    serial = 0
    for wnid in wnids:
        tint = rng.uniform(60, 200, 3).astype(np.float32)
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                h, w = size if (k % 3) else size[::-1]
                rgb = natural_image(rng, h, w, tint, grain)
                serial += 1
                name = f"{wnid}_{k}.JPEG" if split == "train" else f"ILSVRC2012_val_{serial:08d}.JPEG"
                ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
                if not ok:
                    raise RuntimeError("OpenCV failed to encode a sample image")
                (folder / name).write_bytes(buf.tobytes())
    return root
