"""Fused decoders: torchvision's geometry exactly (train: RandomResizedCrop; val: Resize(256) + CenterCrop(224)),
uint8 output, reproducible crops."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torchvision.io as tio
from helpers import opts, photo_tree
from PIL import Image
from torchvision import datasets, transforms
from torchvision.transforms import RandomResizedCrop, v2
from torchvision.transforms import functional as F

from imagenet_pack import CenterCropDecoder, LmdbImageNet, convert
from imagenet_pack.read.crops import Plan, center_crop_plan, random_resized_crop_box
from imagenet_pack.read.decoders import decode_plan, installed_backends

# odd sizes, portrait and landscape, tiny (enlarged to 256), exactly 256, huge (shrunk 6x)
SHAPES = [(375, 500), (500, 375), (333, 499), (77, 101), (256, 256), (224, 300), (1001, 257), (1600, 1200),
          (480, 640), (120, 90)]


@pytest.fixture(scope="module")
def shapes_db(tmp_path_factory):
    root = photo_tree(tmp_path_factory.mktemp("shapes") / "src", SHAPES)
    convert(root, root.parent / "db", opts(splits=("val",)))
    return root, root.parent / "db"


def test_crop_sampler_matches_torchvision_distribution():
    rng = random.Random(0)
    torch.manual_seed(0)
    image = Image.new("RGB", (500, 375))
    ours = np.array([random_resized_crop_box(375, 500, rng) for _ in range(4000)], float)
    ref = np.array([RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(4000)], float)
    for col, name in enumerate(("top", "left", "height", "width")):
        for q in (0.1, 0.5, 0.9):
            a, b = np.quantile(ours[:, col], q), np.quantile(ref[:, col], q)
            assert abs(a - b) <= 0.06 * 500, (name, q, a, b)
    area_ours, area_ref = (ours[:, 2] * ours[:, 3]).mean(), (ref[:, 2] * ref[:, 3]).mean()
    assert abs(area_ours / area_ref - 1) < 0.05


def test_val_plan_is_torchvisions_resize_then_centre_crop():
    assert center_crop_plan(375, 500, 224, 256) == Plan((0, 0, 375, 500), (256, 341), (16, 58), False)
    assert center_crop_plan(500, 333, 224, 256) == Plan((0, 0, 500, 333), (384, 256), (80, 16), False)
    # torchvision: round((341 - 224) / 2) = round(58.5) = 58 (Python rounds half to even)
    assert CenterCropDecoder(224).law.resize_size == 256
    assert CenterCropDecoder(192, resize_size=220).law.resize_size == 220


def _mean_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(np.mean([(x.float() - y.float()).abs().mean().item() for x, y in zip(a, b)]))


def test_val_pixels_equal_torchvisions_reference_as_closely_as_its_own_tensor_backend(shapes_db):
    """On JPEGs of many shapes: the fused val decoder's distance from torchvision's PIL pipeline is within
    0.25 levels of the distance of torchvision's own tensor backend from it."""
    src, db = shapes_db
    folder = datasets.ImageFolder(str(src / "val"))
    pil = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])
    tensor = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])
    reference = [pil(folder.loader(p)) for p, _ in folder.samples]
    floor = _mean_diff([tensor(tio.decode_jpeg(tio.read_file(p), mode=tio.ImageReadMode.RGB))
                        for p, _ in folder.samples], reference)
    assert floor < 0.25
    for backend in installed_backends():
        ds = LmdbImageNet(db, "val", decoder=CenterCropDecoder(224, backend=backend))
        assert list(ds.targets) == folder.targets
        ours = [ds[i][0] for i in range(len(ds))]
        assert all(x.shape == (3, 224, 224) for x in ours)
        assert _mean_diff(ours, reference) <= floor + 0.25, backend
        shifted = [torch.roll(x, 1, dims=2) for x in ours]  # one pixel off: what a geometry error looks like
        assert _mean_diff(shifted, reference) > 4 * (floor + 0.25)


def test_train_pixels_are_torchvisions_resized_crop_of_the_same_box(shapes_db):
    """RandomResizedCrop's geometry: crop an integer box, resize it to size x size with the antialiased
    bilinear of torchvision's tensor backend (its channels-last kernel: rounding differs by a level at most),
    and within a level of PIL's on average."""
    _, db = shapes_db
    full = LmdbImageNet(db, "val", decoder="tensor")
    pil = LmdbImageNet(db, "val")
    rng = random.Random(3)
    for i in range(len(full)):
        record = full.read_record(i)
        for _ in range(3):
            box = random_resized_crop_box(record.height, record.width, rng)
            ours = decode_plan(record, Plan(box, (96, 96), (0, 0), False), 96, "t")
            tensor = F.resized_crop(full[i][0].contiguous(), *box, [96, 96], antialias=True)
            diff = (ours.float() - tensor.float()).abs()
            assert diff.max() <= 1 and diff.mean() < 0.25, (i, box, diff.max(), diff.mean())
            ref = F.pil_to_tensor(F.resized_crop(pil[i][0], *box, [96, 96], antialias=True))
            assert (ours.float() - ref.float()).abs().mean() < 1.0, (i, box)


def test_decode_plan_writes_into_channels_last_or_contiguous_rows(db_session):
    record = LmdbImageNet(db_session, "train").read_record(0)
    plans = [(Plan((0, 0, record.height, record.width), (32, 32), (0, 0), True), 32),  # shrink (torch)
             (Plan((4, 4, 10, 12), (24, 24), (0, 0), True), 24),  # enlarge (OpenCV)
             (center_crop_plan(record.height, record.width, 20, 23), 20)]  # resize the whole, cut the window
    for plan, size in plans:
        alone = decode_plan(record, plan, size, "t")
        assert alone.shape == (3, size, size) and alone.permute(1, 2, 0).is_contiguous()  # HxWx3 underneath
        rows = torch.zeros((2, size, size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
        assert decode_plan(record, plan, size, "t", dest=rows[1]).data_ptr() == rows[1].data_ptr()
        plain = torch.zeros((2, 3, size, size), dtype=torch.uint8)
        decode_plan(record, plan, size, "t", dest=plain[1])
        assert torch.equal(rows[1], alone) and torch.equal(plain[1], alone) and not plain[0].any()
