"""``imagenet-pack bench``: the loaders where you train, side by side, as ratios to torchvision.

On the database DB (and, with ``--images SRC``, the JPEG tree it was converted from) it times, interleaved
in rounds on the same cores: the ImageFolder baselines (train: RandomResizedCrop + flip; val: Resize(256) +
CenterCrop(224); both with ToTensor + Normalize, torchvision's reference transforms), the drop-in
(LmdbImageNet with the train baseline's transforms), and the fused decoders (train and val, per decode
backend; val also with FFCV's cheaper centre-crop geometry, ``-ffcv``). Train entries are divided by the
train baseline, val entries by the val baseline. Each entry is
timed on ``limit`` images a round (``None``: whole epochs). It also times the first batch from process start
(a fresh interpreter: imports, open, worker start-up, first decode) and reports each loader's worker memory;
on a GPU, the training-feed table (:mod:`.feed`); with ``accuracy``, the accuracy table (:mod:`.accuracy`).
"""
from __future__ import annotations

import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BenchError
from ..machine import cpu_name, default_workers
from ..sources.items import SplitSource
from .options import BenchOptions, check_same_images

FIRST_BATCH = """
import sys
from pathlib import Path
from imagenet_pack.bench.loaders import first_batch_loader
batches = first_batch_loader(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
next(iter(batches))
print("first batch", flush=True)
"""


def bench_entries(root: Path, sources: dict[str, SplitSource]) -> dict[str, tuple[str, Any]]:
    """name -> (kind "train" or "val", dataset) for every entry the machine can run; ``sources``: the images
    of ``--images`` by split (:func:`.folders.image_sources`), for the baselines."""
    from ..read.dataset import LmdbImageNet
    from ..read.decoders import CenterCropDecoder, RandomResizedCropDecoder, installed_backends
    from .folders import SourceFolder
    from .timing import standard_train_transform, standard_val_transform

    splits = list_splits_of(root)
    train_split = "train" if "train" in splits else splits[0]
    val_split = "val" if "val" in splits else splits[0]
    entries: dict[str, tuple[str, Any]] = {}
    if sources:
        train_source, val_source = sources.get("train") or sources["val"], sources.get("val") or sources["train"]
        entries["train-baseline"] = ("train", SourceFolder(train_source, transform=standard_train_transform()))
        entries["val-baseline"] = ("val", SourceFolder(val_source, transform=standard_val_transform()))
    entries["train-lmdb-dropin"] = ("train", LmdbImageNet(root, train_split, transform=standard_train_transform()))
    for backend in installed_backends():
        suffix = "" if backend == "opencv" else f"-{backend}"
        entries[f"train-lmdb-fused{suffix}"] = ("train", LmdbImageNet(
            root, train_split, decoder=RandomResizedCropDecoder(224, backend=backend)))
        entries[f"val-lmdb-fused{suffix}"] = ("val", LmdbImageNet(
            root, val_split, decoder=CenterCropDecoder(224, backend=backend)))
        entries[f"val-lmdb-fused-ffcv{suffix}"] = ("val", LmdbImageNet(  # FFCV's cheaper, inexact centre crop
            root, val_split, decoder=CenterCropDecoder(224, geometry="ffcv", backend=backend)))
    return entries


def list_splits_of(root: Path) -> list[str]:
    """The splits of the database ``root``; ImagenetPackError when it is none."""
    from ..read.reader import list_splits
    splits = list_splits(root)
    if not splits:
        raise BenchError(f"{root}: no database found; convert one first")
    return splits


def check_device(device: str) -> None:
    """ImagenetPackError unless torch can use ``device`` here (e.g. "cuda" on a machine without a GPU)."""
    import torch
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise BenchError(f"--device {device}: not usable here ({str(exc).splitlines()[0][:120]})") from None


def first_batch_loader(kind: str, root: Path, workers: int, batch_size: int):
    """The loader whose first batch :func:`time_to_first_batch` times: ``fused`` (build_loader over the
    train split with the fused decoder, as a trainer runs it) or ``imagefolder`` (root: the images, any
    layout convert reads)."""
    if kind == "imagefolder":
        from torch.utils.data import DataLoader

        from .folders import SourceFolder, image_sources
        from .timing import standard_train_transform
        sources = image_sources(root)
        source = sources.get("train") or sources["val"]
        return DataLoader(SourceFolder(source, transform=standard_train_transform()), batch_size=batch_size,
                          shuffle=True, num_workers=workers)
    from ..feeds import build_loader
    from ..read.dataset import LmdbImageNet
    from ..read.decoders import RandomResizedCropDecoder
    from ..read.reader import list_splits
    split = "train" if "train" in list_splits(root) else list_splits(root)[0]
    return build_loader(LmdbImageNet(root, split, decoder=RandomResizedCropDecoder(224, backend="auto")), batch_size,
                        workers=workers)


FIRST_BATCH_TIMEOUT = 300  # seconds a first-batch process may take, exit included, before it is killed


def time_to_first_batch(kind: str, root: Path, workers: int, batch_size: int, runs: int = 3) -> float:
    """Seconds from starting a fresh Python process to its first batch (the median of ``runs``)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", FIRST_BATCH, kind, str(root), str(workers), str(batch_size)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = threading.Timer(FIRST_BATCH_TIMEOUT, process.kill)
        deadline.start()
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            elapsed = time.perf_counter() - started
            _, err = process.communicate()
        finally:
            deadline.cancel()
        if process.returncode == -signal.SIGKILL:
            raise BenchError(f"timing the first batch ({kind}): the process did not finish within "
                                    f"{FIRST_BATCH_TIMEOUT} s and was killed")
        if process.returncode != 0 or not line.startswith("first batch"):
            raise BenchError(f"timing the first batch ({kind}) failed: {err.strip()[-500:]}")
        times.append(elapsed)
    return sorted(times)[len(times) // 2]


def run_bench(root: Path | str, options: BenchOptions | None = None,
              echo: Callable[[str], None] | None = None) -> dict:
    """Measure every entry (see the module docstring); returns the JSON-ready results."""
    options = options if options is not None else BenchOptions()
    import cv2
    import torch
    import torchvision

    from ..gpu.device import cuda_available, device_name
    from .folders import image_sources
    from .timing import measure, ratio

    echo = echo or (lambda line: None)
    root = Path(root)
    workers = options.workers or default_workers()
    sources = image_sources(options.images) if options.images is not None else {}
    entries = bench_entries(root, sources)
    model = None
    if options.images is not None:  # everything that can fail is tried before the first image is timed
        splits = list_splits_of(root)
        check_same_images(sources, options.images, root, {k: k if k in splits else splits[0] for k in ("train", "val")})
    if options.accuracy:
        from .accuracy import load_model
        model = load_model(options.arch, options.weights)
        for other in options.databases:
            other_splits = list_splits_of(other)
            if options.images is not None:
                check_same_images(sources, options.images, other,
                                  {"val": "val" if "val" in other_splits else other_splits[0]})
        from .accuracy import check_pipelines
        check_pipelines(root, options, sources)
    if options.feed_device is not None:
        check_device(options.feed_device)
    echo(f"timing {len(entries)} loaders, {options.limit or 'an epoch of'} images a round, {options.rounds} "
         f"rounds after a warm-up, {workers} workers")
    results = measure({name: (dataset, None) for name, (_, dataset) in entries.items()}, workers, options.rounds,
                      options.batch_size, options.limit, echo)
    baselines = {kind: next((r for r in results if r["name"] == f"{kind}-baseline"), None) for kind in ("train", "val")}
    for r in results:
        kind = entries[r["name"]][0]
        r["kind"] = kind
        baseline = baselines[kind]
        r["ratio_to_baseline"] = ratio(r, baseline) if baseline else None
    echo("timing the first batch from process start")
    runs = min(3, options.rounds)  # one fresh process per round, at most three
    first = {"lmdb_fused_train_s": time_to_first_batch("fused", root, workers, options.batch_size, runs)}
    if options.images is not None:
        first["imagefolder_train_s"] = time_to_first_batch("imagefolder", options.images, workers, options.batch_size,
                                                           runs)
    feed = None
    if options.feed_device is not None:
        from ..read.dataset import LmdbImageNet
        from ..read.decoders import RandomResizedCropDecoder
        from .feed import feed_table
        echo(f"training {options.feed_arch} from each feed on {options.feed_device}")
        train = next(d for name, (_, d) in entries.items() if name.startswith("train-lmdb-fused"))
        assert isinstance(train, LmdbImageNet)
        feed = feed_table(LmdbImageNet(root, train.split, decoder=RandomResizedCropDecoder(224, backend="auto")),
                          arch=options.feed_arch, batch_size=options.feed_batch_size, steps=options.feed_steps,
                          workers=workers, device=options.feed_device)
    accuracy = None
    if model is not None:
        from .accuracy import accuracy_table
        echo("evaluating the model through every read path")
        accuracy = accuracy_table(root, options, sources, model, echo)
    return {"machine": {"cores": default_workers(), "platform": platform.platform(), "cpu": cpu_name(),
                        "cuda": device_name(torch.device("cuda", 0)) if cuda_available() else None},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "opencv": cv2.__version__},
            "date": time.strftime("%Y-%m-%d"), "database": str(root),
            "images": str(options.images) if options.images else None, "workers": workers,
            "batch_size": options.batch_size, "rounds": options.rounds, "images_per_round": options.limit,
            "results": results, "time_to_first_batch": first, "training_feed": feed,
            "training_feed_model": {"arch": options.feed_arch, "batch_size": options.feed_batch_size,
                                    "device": options.feed_device} if feed else None,
            "accuracy": accuracy}
