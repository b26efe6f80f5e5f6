"""``imagenet-pack demo``: the whole job on a generated ImageNet-shaped sample, with a side-by-side speed test."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

from torch.utils.data import DataLoader

from .convert import ConvertOptions, convert
from .machine import default_workers
from .read.dataset import LmdbImageNet
from .read.decoders import RandomResizedCropDecoder, installed_backends
from .synthetic import make_sample_tree
from .timing import images_per_second, standard_train_transform


def run_demo(workdir: Path | None = None, *, classes: int = 10, per_class: int = 30, workers: int | None = None,
             echo: Callable[[str], None] = print) -> dict[str, float]:
    """Generate, convert, read back and time; returns the measured images/s by name."""
    workers = workers or default_workers()
    with tempfile.TemporaryDirectory(prefix="imagenet-pack-demo-") as tmp:
        base = Path(workdir) if workdir else Path(tmp)
        src, dst = base / "imagenet", base / "imagenet-lmdb"
        start = time.perf_counter()
        make_sample_tree(src, classes=classes, train_per_class=per_class, val_per_class=max(1, per_class // 3))
        n_files = sum(1 for p in src.rglob("*.JPEG"))
        echo(f"generated {n_files} ImageNet-like JPEGs (~500x375, q90) in {src} "
             f"({time.perf_counter() - start:.1f} s)")
        report = convert(src, dst, ConvertOptions(workers=workers, overwrite=True, progress=False))
        for r in report.splits:
            echo(f"converted {r.split}: {r.stored} records in {r.seconds:.1f} s "
                 f"({r.stored / r.seconds:.0f} images/s with {workers} workers), "
                 f"database/source bytes {r.storage_ratio:.3f}")
        train = LmdbImageNet(dst, "train", transform=standard_train_transform())
        seen = 0
        loader = DataLoader(train, batch_size=16, num_workers=2)
        for images, targets in loader:
            seen += len(images)
        echo(f"read back {seen} train samples through DataLoader(num_workers=2): batches of "
             f"{tuple(images.shape[1:])} {images.dtype}, classes: {', '.join(train.classes[t][0] for t in range(3))}, ...")
        from torchvision.datasets import ImageFolder
        folder = ImageFolder(str(src / "train"), transform=standard_train_transform())
        rates = {
            "ImageFolder + PIL (baseline)": images_per_second(folder, workers=workers),
            "LmdbImageNet, same transforms": images_per_second(train, workers=workers),
            "LmdbImageNet, fused decode+crop (uint8)": images_per_second(
                LmdbImageNet(dst, "train", decoder=RandomResizedCropDecoder(224)), workers=workers),
        }
        for backend in installed_backends()[1:]:  # the region decoders installed here
            rates[f"LmdbImageNet, fused, region decode ({backend})"] = images_per_second(
                LmdbImageNet(dst, "train", decoder=RandomResizedCropDecoder(224, backend=backend)), workers=workers)
        base_rate = rates["ImageFolder + PIL (baseline)"]
        echo(f"\nthroughput, RandomResizedCrop(224) + flip, {workers} workers, {len(train)} images "
             "(the fused entries leave normalisation to the GPU):")
        for name, rate in rates.items():
            echo(f"  {name:<48} {rate:8.0f} images/s  {rate / base_rate:5.2f}x")
    return rates
