"""``imagenet-pack bench``: measure the loaders where you train, side by side, as ratios to torchvision.

On the database DB (and, with ``--images SRC``, the JPEG tree it was converted from) it times, interleaved
in rounds on the same cores: the ImageFolder baselines (train: RandomResizedCrop + flip; val: Resize(256) +
CenterCrop(224); both with ToTensor + Normalize, torchvision's reference transforms), the drop-in
(LmdbImageNet with the train baseline's transforms), and the fused decoders (train and val, per decode
backend). Train entries are divided by the train baseline, val entries by the val baseline. It also times
the first batch from process start (a fresh interpreter: imports, open, worker start-up, first decode) and
reports each loader's worker memory. Results go to stdout as a table and, with ``--json``, to a file.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ImagenetPackError
from .machine import default_workers

FIRST_BATCH = """
import sys
from pathlib import Path
from imagenet_pack.bench import first_batch_loader
batches = first_batch_loader(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
next(iter(batches))
print("first batch", flush=True)
"""


@dataclass(frozen=True)
class BenchOptions:
    """What to measure: ``images`` (a class-folder tree, or the root holding train/ and val/) adds the
    ImageFolder baselines; ``epochs`` timed rounds after a warm-up; ``workers`` loader processes."""

    images: Path | None = None
    workers: int | None = None
    epochs: int = 3
    batch_size: int = 32
    feed_device: str | None = None  # also train ``feed_arch`` from each feed on this device (a GPU)
    feed_arch: str = "resnet50"
    feed_batch_size: int = 256
    feed_steps: int = 20


def _split_dirs(images: Path) -> dict[str, Path]:
    """The class-folder trees of ``images`` by split: ROOT/train and ROOT/val, or ROOT itself as both."""
    found = {s: images / s for s in ("train", "val") if (images / s).is_dir()}
    if not found and images.is_dir():
        found = {"train": images, "val": images}
    if not found:
        raise ImagenetPackError(f"{images}: not a folder of class folders (nor one holding train/ and val/)")
    return found


def bench_entries(root: Path, options: BenchOptions) -> dict[str, tuple[str, object]]:
    """name -> (kind "train" or "val", dataset) for every entry the machine can run."""
    from torchvision.datasets import ImageFolder

    from .read.dataset import LmdbImageNet
    from .read.decoders import CenterCropDecoder, RandomResizedCropDecoder, installed_backends
    from .read.reader import list_splits
    from .timing import standard_train_transform, standard_val_transform

    splits = list_splits(root)
    if not splits:
        raise ImagenetPackError(f"{root}: no database found; convert one first")
    train_split = "train" if "train" in splits else splits[0]
    val_split = "val" if "val" in splits else splits[0]
    entries: dict[str, tuple[str, object]] = {}
    if options.images is not None:
        trees = _split_dirs(options.images)
        entries["train-baseline"] = ("train", ImageFolder(str(trees.get("train", trees.get("val"))),
                                                           transform=standard_train_transform()))
        entries["val-baseline"] = ("val", ImageFolder(str(trees.get("val", trees.get("train"))),
                                                       transform=standard_val_transform()))
    entries["train-lmdb-dropin"] = ("train", LmdbImageNet(root, train_split, transform=standard_train_transform()))
    for backend in installed_backends():
        suffix = "" if backend == "opencv" else f"-{backend}"
        entries[f"train-lmdb-fused{suffix}"] = ("train", LmdbImageNet(
            root, train_split, decoder=RandomResizedCropDecoder(224, backend=backend)))
        entries[f"val-lmdb-fused{suffix}"] = ("val", LmdbImageNet(
            root, val_split, decoder=CenterCropDecoder(224, backend=backend)))
    return entries


def first_batch_loader(kind: str, root: Path, workers: int, batch_size: int):
    """The loader whose first batch :func:`time_to_first_batch` times: ``fused`` (build_loader over the
    train split with the fused decoder, as a trainer runs it) or ``imagefolder`` (root: a class folder)."""
    if kind == "imagefolder":
        from torch.utils.data import DataLoader
        from torchvision.datasets import ImageFolder

        from .timing import standard_train_transform
        return DataLoader(ImageFolder(str(root), transform=standard_train_transform()), batch_size=batch_size,
                          shuffle=True, num_workers=workers)
    from .loader.loader import build_loader
    from .read.dataset import LmdbImageNet
    from .read.decoders import RandomResizedCropDecoder
    from .read.reader import list_splits
    split = "train" if "train" in list_splits(root) else list_splits(root)[0]
    return build_loader(LmdbImageNet(root, split, decoder=RandomResizedCropDecoder(224, backend="auto")), batch_size,
                        workers=workers)


def time_to_first_batch(kind: str, root: Path, workers: int, batch_size: int) -> float:
    """Seconds from starting a fresh Python process to its first batch (median of 3)."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", FIRST_BATCH, kind, str(root), str(workers), str(batch_size)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = process.stdout.readline()
        elapsed = time.perf_counter() - started
        _, err = process.communicate()
        if process.returncode != 0 or not line.startswith("first batch"):
            raise ImagenetPackError(f"timing the first batch ({kind}) failed: {err.strip()[-500:]}")
        times.append(elapsed)
    return sorted(times)[1]


def run_bench(root: Path | str, options: BenchOptions = BenchOptions()) -> dict:
    """Measure every entry (see the module docstring); returns the JSON-ready results."""
    import cv2
    import torch
    import torchvision

    from .timing import measure

    root = Path(root)
    workers = options.workers or default_workers()
    entries = bench_entries(root, options)
    results = measure({name: (dataset, None) for name, (_, dataset) in entries.items()}, workers, options.epochs,
                      options.batch_size)
    baselines = {kind: next((r["images_per_s"] for r in results if r["name"] == f"{kind}-baseline"), None)
                 for kind in ("train", "val")}
    for r in results:
        kind = entries[r["name"]][0]
        r["kind"] = kind
        r["ratio_to_baseline"] = r["images_per_s"] / baselines[kind] if baselines[kind] else None
    first = {"lmdb_fused_train_s": time_to_first_batch("fused", root, workers, options.batch_size)}
    if options.images is not None:
        first["imagefolder_train_s"] = time_to_first_batch(
            "imagefolder", _split_dirs(options.images).get("train", options.images), workers, options.batch_size)
    feed = None
    if options.feed_device is not None:
        from .gpu.feed import feed_table
        from .read.dataset import LmdbImageNet
        from .read.decoders import RandomResizedCropDecoder
        train = next(d for name, (_, d) in entries.items() if name.startswith("train-lmdb-fused"))
        feed = feed_table(LmdbImageNet(root, train.split, decoder=RandomResizedCropDecoder(224, backend="auto")),
                          arch=options.feed_arch, batch_size=options.feed_batch_size, steps=options.feed_steps,
                          workers=workers, device=options.feed_device)
    return {"machine": {"cores": default_workers(), "platform": platform.platform(), "cpu": platform.processor(),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "opencv": cv2.__version__},
            "database": str(root), "images": str(options.images) if options.images else None, "workers": workers,
            "batch_size": options.batch_size, "epochs": options.epochs, "results": results,
            "time_to_first_batch": first, "training_feed": feed,
            "training_feed_model": {"arch": options.feed_arch, "batch_size": options.feed_batch_size,
                                    "device": options.feed_device} if feed else None}


def format_table(report: dict) -> str:
    """The results as a text table, ratios against the baseline of the same kind measured in the same run."""
    lines = [f"{report['workers']} workers on {report['machine']['cores']} cores, batch {report['batch_size']}, "
             f"median of {report['epochs']} interleaved rounds",
             f"{'entry':<26} {'images/s':>9} {'x baseline':>11} {'worker MB private/shared':>25}"]
    for r in report["results"]:
        ratio = f"{r['ratio_to_baseline']:.2f}" if r["ratio_to_baseline"] is not None else "-"
        lines.append(f"{r['name']:<26} {r['images_per_s']:>9.0f} {ratio:>11} "
                     f"{r['worker_private_mb']:>15.0f} / {r['worker_shared_mb']:<6.0f}")
    first = report["time_to_first_batch"]
    lines.append("time to first batch from process start: " + ", ".join(
        f"{name[:-2].replace('_', ' ')} {seconds:.2f} s" for name, seconds in first.items()))
    if report["training_feed"]:
        model = report["training_feed_model"]
        lines.append(f"training feed, {model['arch']} batch {model['batch_size']} on {model['device']}:")
        for row in report["training_feed"]:
            share = f"   GPU share {row['gpu_share']:.2f}" if row["gpu_share"] is not None else ""
            lines.append(f"  {row['feed']:<36} {row['images_per_s']:8.0f} images/s   {row['of_bound']:5.2f} of the "
                         f"bound   data wait {row['data_wait']:4.0%}{share}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """A bar chart of the ratios (needs matplotlib: ``pip install 'imagenet-pack[plot]'``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImagenetPackError("--plot needs matplotlib: pip install 'imagenet-pack[plot]'") from exc
    rows = [r for r in report["results"] if r["ratio_to_baseline"] is not None]
    figure, axes = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
    axes.barh([r["name"] for r in rows], [r["ratio_to_baseline"] for r in rows],
              color=["#999999" if "baseline" in r["name"] else "#3a7ebf" for r in rows])
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlabel("images/s, x the torchvision ImageFolder baseline of the same kind (train or val)")
    axes.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2))
