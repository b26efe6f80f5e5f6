"""What the tests share: fake ImageNet trees of real JPEG files, conversion options, the CLI as a real
process, and ways to damage a database on disk."""
from __future__ import annotations

import io
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import lmdb
import numpy as np
import scipy.io
import torch

from imagenet_pack import ConvertOptions, LmdbImageNet, convert
from imagenet_pack.contract.format import META_DB
from imagenet_pack.contract.shardfiles import close_shard as close_handle
from imagenet_pack.sources.synsets import builtin_names
from imagenet_pack.synthetic import make_sample_tree


def small_tree(root: Path, *, classes: int = 4, per_class: int = 6, seed: int = 0) -> Path:
    """classes x per_class train and classes x 3 val JPEGs of 48x64 px (portrait every third)."""
    return make_sample_tree(root, classes=classes, train_per_class=per_class, val_per_class=3,
                            size=(48, 64), seed=seed)


def opts(**kw) -> ConvertOptions:
    """ConvertOptions for tests: one worker and no progress unless asked."""
    return ConvertOptions(**{"workers": 1, "progress": False, **kw})


def records(root: Path, split: str = "train"):
    """Every record with its source path, the targets and the class list: what two equal databases share."""
    ds = LmdbImageNet(root, split)
    return [(ds.read_record(i), ds.paths[i]) for i in range(len(ds))], ds.targets.tolist(), ds.wnids


def cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """``imagenet-pack ARGS`` as a real process (text output captured)."""
    return subprocess.run([sys.executable, "-m", "imagenet_pack.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kw)


def put_meta(path: Path, key: bytes, value: bytes | None) -> None:
    """Write (or delete, for None) one key of a shard's meta table, as damage or an old writer would."""
    close_handle(path)
    env = lmdb.open(str(path), max_dbs=3)
    meta = env.open_db(META_DB)
    with env.begin(write=True, db=meta) as txn:
        if value is None:
            txn.delete(key)
        else:
            txn.put(key, value)
    env.close()


def flip_payload_byte(db_dir: Path, source_file: Path) -> None:
    """Flip one byte of ``source_file``'s entropy-coded data wherever it sits inside data.mdb: LMDB's free pages
    can hold a stale copy of a record from an earlier transaction, so every copy is flipped."""
    data = open(source_file, "rb").read()
    needle = data[len(data) // 2:len(data) // 2 + 48]
    blob = bytearray((db_dir / "data.mdb").read_bytes())
    at = blob.find(needle)
    assert at >= 0
    while at >= 0:
        blob[at + 7] ^= 0xFF
        at = blob.find(needle, at + 1)
    (db_dir / "data.mdb").write_bytes(bytes(blob))


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like RGB image: smooth shading, soft-edged shapes, some grain (what ImageNet JPEGs hold)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([yy * 200 / height, xx * 200 / width, (yy + xx) * 100 / (height + width)], -1)
    image = image + rng.uniform(0, 55, 3)
    for _ in range(8):
        cv2.ellipse(image, (int(rng.integers(0, width)), int(rng.integers(0, height))),
                    (int(rng.integers(5, max(6, width // 4))), int(rng.integers(5, max(6, height // 4)))), 0, 0, 360,
                    tuple(float(v) for v in rng.uniform(0, 255, 3)), -1)
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.2) + rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_jpeg(path: Path, rgb: np.ndarray, quality: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def photo_tree(root: Path, sizes: list[tuple[int, int]], classes: int = 3, split: str = "val") -> Path:
    """``root/split/<wnid>/k.JPEG``: photo-like JPEGs of the given (height, width) sizes, cycled over classes."""
    wnids = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"][:classes]
    for k, (h, w) in enumerate(sizes):
        write_jpeg(root / split / wnids[k % classes] / f"{k:03d}.JPEG", photo(h, w, k))
    return root


MIXED_SIZES = [(375, 500), (500, 375), (90, 120), (260, 180), (150, 200), (333, 499), (110, 96), (420, 300)]


def photo_db(root: Path, copies: int) -> Path:
    """A converted train split of photo-like JPEGs of :data:`MIXED_SIZES` (the smaller ones far smaller than a
    batch's largest), ``copies`` times over; returns the database folder."""
    source = photo_tree(root / "src", MIXED_SIZES * copies, split="train")
    convert(source, root / "db", opts(splits=("train",)))
    return root / "db"


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def devkit_bytes(id_order: list[str], val_wnids: list[str], *, extra_truth: list[int] = ()) -> bytes:
    """A devkit .tar.gz: meta.mat with 1000 leaves in ``id_order`` (ILSVRC2012_ID = position + 1) followed by
    860 non-leaf synsets, and a ground-truth file for ``val_wnids``."""
    names = builtin_names()
    leaf = [(i + 1, w, ", ".join(names[w]), "gloss", 0, np.zeros(0), 0, 1300) for i, w in enumerate(id_order)]
    inner = [(1001 + k, f"n9{k:07d}", f"inner {k}", "gloss", 2, np.array([1.0, 2.0]), 3, 0) for k in range(860)]
    dt = [(f, "O") for f in ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
                             "wordnet_height", "num_train_images")]
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": np.array(leaf + inner, dtype=dt)})
    ids = {w: i + 1 for i, w in enumerate(id_order)}
    truth = "".join(f"{ids[w]}\n" for w in val_wnids) + "".join(f"{t}\n" for t in extra_truth)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        add_member(tar, "ILSVRC2012_devkit_t12/data/meta.mat", mat.getvalue())
        add_member(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth.encode())
    return out.getvalue()


def devkit_tree(root: Path) -> Path:
    """ILSVRC2012's extracted devkit layout at ``root``: train/<wnid>/ class folders, a flat val/ of
    ``ILSVRC2012_val_<n>.JPEG`` and the devkit (1000 classes) naming their labels; val holds 5 of them."""
    tree = small_tree(root.parent / f"{root.name}-folders", classes=5, per_class=4)
    for path in sorted((tree / "train").rglob("*.JPEG")):
        (root / "train" / path.parent.name).mkdir(parents=True, exist_ok=True)
        (root / "train" / path.parent.name / path.name).write_bytes(path.read_bytes())
    val = sorted((tree / "val").rglob("*.JPEG"))
    (root / "val").mkdir(parents=True)
    for i, path in enumerate(val):
        (root / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG").write_bytes(path.read_bytes())
    order = sorted(builtin_names())
    random.Random(2).shuffle(order)  # ILSVRC2012_ID order is not sorted-wnid order
    (root / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(devkit_bytes(order, [p.parent.name for p in val]))
    return root


class EveryDataset(torch.utils.data.Dataset):
    """Sample k of each of ``datasets`` together (at epoch 1 where ``seeded`` says a crop is random): several
    datasets through one pool of DataLoader workers."""

    def __init__(self, datasets: list, seeded: list[bool]):
        self.datasets, self.seeded = datasets, seeded

    def __len__(self) -> int:
        return min(len(ds) for ds in self.datasets)

    def __getitem__(self, k: int) -> tuple:
        return tuple(ds[(k, 1) if seeded else k][0] for ds, seeded in zip(self.datasets, self.seeded))
