"""``imagenet-pack demo``: the whole job on a generated ImageNet-shaped sample, with a side-by-side speed test."""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from .arguments import DEMO_CLASSES, DEMO_PER_CLASS
from .bench.report import RATIO_NOTE, rate_cells
from .bench.timing import measure, standard_train_transform
from .errors import DestinationError
from .machine import default_workers
from .read.dataset import LmdbImageNet
from .read.decoders import RandomResizedCropDecoder, installed_backends
from .synthetic import make_sample_tree
from .write.converter import convert
from .write.options import ConvertOptions


def run_demo(workdir: Path | None = None, *, classes: int = DEMO_CLASSES, per_class: int = DEMO_PER_CLASS,
             workers: int | None = None, echo: Callable[[str], None] = print) -> dict[str, float]:
    """Generate, convert, read back and time; returns the measured images/s by name. ``workdir`` must be a new
    or empty folder: the demo never writes among files it did not make."""
    workers = workers or default_workers()
    if workdir is not None:
        workdir = Path(workdir)
        if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
            raise DestinationError(f"{workdir}: exists and is not an empty folder; the demo writes only into a new "
                                    "or empty folder (it would otherwise write among your files): choose another --dir")
    with tempfile.TemporaryDirectory(prefix="imagenet-pack-demo-") as tmp:
        base = workdir if workdir is not None else Path(tmp)
        src, dst = base / "imagenet", base / "imagenet-lmdb"
        start = time.perf_counter()
        make_sample_tree(src, classes=classes, train_per_class=per_class, val_per_class=max(1, per_class // 3))
        n_files = sum(1 for p in src.rglob("*.JPEG"))
        echo(f"generated {n_files} ImageNet-like JPEGs (~500x375, q90) in {src} "
             f"({time.perf_counter() - start:.1f} s)")
        report = convert(src, dst, ConvertOptions(workers=workers, progress=False))
        for split in report.splits:
            echo(f"converted {split.split}: {split.stored} records in {split.seconds:.1f} s ({split.rate:.0f} "
                 f"images/s with {workers} workers), database/source bytes {split.storage_ratio:.3f}")
        echo(f"database: {dst}" + ("" if workdir is not None else " (a temporary folder, removed at the end: "
                                   "demo --dir DIR keeps it)"))
        train = LmdbImageNet(dst, "train", transform=standard_train_transform())
        seen = 0
        loader = DataLoader(train, batch_size=16, num_workers=2)
        for images, _ in loader:
            seen += len(images)
        echo(f"read back {seen} train samples through DataLoader(num_workers=2): batches of "
             f"{tuple(images.shape[1:])} {images.dtype}, classes: "
             f"{', '.join(train.classes[t][0] for t in range(3))}, ...")
        from torchvision.datasets import ImageFolder
        folder = ImageFolder(str(src / "train"), transform=standard_train_transform())
        entries: dict[str, tuple[Any, list[Path] | None]] = {
            "ImageFolder + PIL (baseline)": (folder, None),
            "LmdbImageNet, same transforms": (train, None),
            "LmdbImageNet, fused decode+crop (uint8)": (
                LmdbImageNet(dst, "train", decoder=RandomResizedCropDecoder(224)), None),
        }
        for backend in installed_backends()[1:]:  # the region decoders installed here
            entries[f"LmdbImageNet, fused, region decode ({backend})"] = (
                LmdbImageNet(dst, "train", decoder=RandomResizedCropDecoder(224, backend=backend)), None)
        echo("\ntiming, interleaved: an epoch of each per round, 3 rounds after a warm-up")
        results = measure(entries, workers, rounds=3, batch_size=32)
        echo(f"throughput, RandomResizedCrop(224) + flip, {workers} workers, {len(train)} images "
             "(the fused entries leave normalisation to the GPU):")
        cells = [rate_cells(r, results[0]) for r in results]
        rates_w = max(len("images/s, each round -> median"), *(len(c[0]) for c in cells))
        echo(f"  {'entry':<48}  {'images/s, each round -> median':<{rates_w}}  x ImageFolder")
        for r, (rates, times) in zip(results, cells):
            echo(f"  {r['name']:<48}  {rates:<{rates_w}}  {times}")
        echo("  " + RATIO_NOTE.replace("x baseline", "x ImageFolder").replace("the baseline's", "ImageFolder's"))
    return {r["name"]: r["images_per_s"] for r in results}
