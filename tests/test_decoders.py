"""Fused decode + crop decoders (torchvision semantics, uint8 output)."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as F
from PIL import Image

from imagenet_pack import CenterCropDecoder, LmdbImageNet, RandomResizedCropDecoder
from imagenet_pack.read.crops import center_crop_box, random_resized_crop_box
from imagenet_pack.read.decoders import decode_crop


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


def test_fused_crop_matches_torchvision_on_fixed_boxes(db_session):
    ds = LmdbImageNet(db_session, "train")
    for i, box in enumerate([(0, 0, 48, 64), (5, 10, 30, 40), (10, 3, 20, 20)]):
        record = ds.read_record(i)
        box = (min(box[0], record.height - 1), box[1], min(box[2], record.height), min(box[3], record.width))
        ours = decode_crop(record.image, box, 32, False, "t").permute(1, 2, 0).numpy().astype(np.float32)
        ref = F.resized_crop(ds[i][0], *box, [32, 32], antialias=True)
        diff = np.abs(ours - np.asarray(ref, np.float32)).mean()
        assert diff < 6.0, (i, box, diff)


def test_center_crop_box_is_the_resize_then_centre_crop_square():
    assert center_crop_box(375, 500, 224 / 256) == (23, 86, 328, 328)


def test_decoders_give_uint8_batches_and_are_reproducible(db_session):
    train = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(24, seed=3))
    a, _ = train[(5, 1)]
    b, _ = train[(5, 1)]
    c, _ = train[(5, 2)]
    assert a.dtype == torch.uint8 and a.shape == (3, 24, 24)
    assert torch.equal(a, b) and not torch.equal(a, c)
    val = LmdbImageNet(db_session, "val", decoder=CenterCropDecoder(16))
    loader = DataLoader(val, batch_size=4, num_workers=2)
    batches = list(loader)
    assert all(x.dtype == torch.uint8 and x.shape[1:] == (3, 16, 16) for x, _ in batches)
    assert sum(len(x) for x, _ in batches) == len(val)
    assert torch.equal(torch.cat([x for x, _ in batches]), torch.cat([x for x, _ in DataLoader(val, batch_size=4)]))


def test_decode_crop_writes_into_channels_last_or_contiguous_rows(db_session):
    record = LmdbImageNet(db_session, "train").read_record(0)
    for box, size in (((0, 0, record.height, record.width), 32), ((4, 4, 10, 12), 24)):  # shrink (torch), enlarge (OpenCV)
        alone = decode_crop(record.image, box, size, True, "t")
        assert alone.shape == (3, size, size) and alone.permute(1, 2, 0).is_contiguous()  # HxWx3 underneath
        rows = torch.zeros((2, size, size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
        assert decode_crop(record.image, box, size, True, "t", dest=rows[1]).data_ptr() == rows[1].data_ptr()
        plain = torch.zeros((2, 3, size, size), dtype=torch.uint8)
        decode_crop(record.image, box, size, True, "t", dest=plain[1])
        assert torch.equal(rows[1], alone) and torch.equal(plain[1], alone) and not plain[0].any()
