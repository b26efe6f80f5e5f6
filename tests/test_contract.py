"""The contract every decoder keeps with LmdbImageNet, as one grid (torchvision's ``DatasetTestCase`` idea):
each decoder, with each backend and geometry it has, gives samples of its declared type, shape and dtype;
negative indices count from the end and out-of-range ones are IndexErrors; transforms and target transforms
apply; the dataset pickles and gives the same samples after; DataLoader workers under fork and spawn give the
samples the main process gives; (index, epoch) pairs make crops reproducible."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from imagenet_pack import CenterCropDecoder, LmdbImageNet, RandomResizedCropDecoder
from imagenet_pack.read.nvcodec import AVAILABLE as NVIMGCODEC_AVAILABLE

NV = pytest.mark.nvimgcodec
DECODERS = {  # name -> (decoder, shape of a sample: None for the full image)
    "pil": ("pil", None),
    "tensor": ("tensor", None),
    "rrc-opencv": (lambda: RandomResizedCropDecoder(24, seed=3, backend="opencv"), (3, 24, 24)),
    "rrc-nvimgcodec": (lambda: RandomResizedCropDecoder(24, seed=3, backend="nvimgcodec"), (3, 24, 24)),
    "rrc-dct-scaling": (lambda: RandomResizedCropDecoder(8, seed=3, dct_scaling=True), (3, 8, 8)),
    "center-torchvision": (lambda: CenterCropDecoder(20), (3, 20, 20)),
    "center-nvimgcodec": (lambda: CenterCropDecoder(20, backend="nvimgcodec"), (3, 20, 20)),
    "center-ffcv": (lambda: CenterCropDecoder(20, geometry="ffcv"), (3, 20, 20)),
}
GRID = [pytest.param(name, marks=NV, id=name) if "nvimgcodec" in name else pytest.param(name, id=name)
        for name in DECODERS]


def dataset(db, name: str, **kw) -> LmdbImageNet:
    decoder, _ = DECODERS[name]
    return LmdbImageNet(db, "val", decoder=decoder() if callable(decoder) else decoder, **kw)


def as_array(sample) -> np.ndarray:
    return np.asarray(sample) if isinstance(sample, Image.Image) else sample.numpy()


@pytest.mark.parametrize("name", GRID)
def test_samples_have_the_declared_type_shape_and_dtype(db_session, name):
    ds = dataset(db_session, name)
    sample, target = ds[1]
    record = ds.read_record(1)
    shape = DECODERS[name][1]
    assert target == record.target == int(ds.targets[1])
    if name == "pil":
        assert isinstance(sample, Image.Image) and sample.mode == "RGB" and sample.size == (record.width, record.height)
        assert ds.batch_shape is None
    else:
        assert sample.dtype == torch.uint8
        assert tuple(sample.shape) == (shape or (3, record.height, record.width))
        assert ds.batch_shape == shape  # declared once, when the dataset is made
    if shape is not None:
        assert sample.permute(1, 2, 0).is_contiguous()  # channels-last, as the GPU wants it


@pytest.mark.parametrize("name", GRID)
def test_indices_count_from_the_end_and_out_of_range_is_an_index_error(db_session, name):
    ds = dataset(db_session, name)
    last, end = ((-1, 0), (len(ds) - 1, 0)) if DECODERS[name][1] else (-1, len(ds) - 1)  # pairs fix random crops
    assert np.array_equal(as_array(ds[last][0]), as_array(ds[end][0]))
    for bad in (len(ds), -len(ds) - 1):
        with pytest.raises(IndexError, match="out of range"):
            ds[bad]
        with pytest.raises(IndexError, match="out of range"):
            ds.read_record(bad)


@pytest.mark.parametrize("name", GRID)
def test_transforms_and_target_transforms_apply(db_session, name):
    ds = dataset(db_session, name, transform=lambda x: ("seen", x), target_transform=lambda t: t + 1000)
    (tag, _), target = ds[2]
    assert tag == "seen" and target == int(ds.targets[2]) + 1000
    assert ds.batch_shape is None  # a transform can change the shape: samples are collated, not decoded in place


@pytest.mark.parametrize("name", GRID)
def test_the_dataset_pickles_and_gives_the_same_samples_after(db_session, name):
    ds = dataset(db_session, name)
    index = (3, 7) if DECODERS[name][1] else 3  # an (index, epoch) pair fixes a random crop
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone) == len(ds) and clone.wnids == ds.wnids
    assert np.array_equal(as_array(clone[index][0]), as_array(ds[index][0]))


@pytest.mark.slow
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_under_fork_and_spawn_give_what_the_main_process_gives(db_session, context):
    """Every decoder of the grid at once, in one pool of workers (a spawned worker imports torch: one pool, not
    one per decoder): each sample equals the main process's."""
    from helpers import EveryDataset
    names = [n for n in DECODERS if "nvimgcodec" not in n or NVIMGCODEC_AVAILABLE]
    datasets = [dataset(db_session, n, transform=np.array if n == "pil" else None) for n in names]
    for ds in datasets:
        ds[0]  # the parent reads first: workers must still open their own files
    every = EveryDataset(datasets, [bool(DECODERS[n][1]) for n in names])
    loader = DataLoader(every, batch_size=None, num_workers=2, multiprocessing_context=context)
    got = list(loader)
    assert len(got) == len(every)
    for k, samples in enumerate(got):
        for name, ds, sample in zip(names, datasets, samples):
            expected = ds[(k, 1) if DECODERS[name][1] else k][0]
            assert np.array_equal(np.asarray(sample), np.asarray(expected)), (name, k)


@pytest.mark.parametrize("name", [n for n in GRID if DECODERS[n.values[0]][1]])
def test_an_index_epoch_pair_makes_a_crop_reproducible(db_session, name):
    ds = dataset(db_session, name)
    a, b, c = ds[(5 % len(ds), 1)][0], ds[(5 % len(ds), 1)][0], ds[(5 % len(ds), 2)][0]
    assert torch.equal(a, b)
    assert torch.equal(a, c) == ("center" in name)  # a centre crop is the same every epoch, a random one is not
