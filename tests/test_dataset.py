"""Convert a class-folder tree, read it back as LmdbImageNet, exactly as ImageFolder would."""
from __future__ import annotations

import lmdb
import msgpack
import numpy as np
import pytest
import torch
from helpers import flip_payload_byte, put_meta
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from imagenet_pack import (
    ConvertOptions,
    CorruptRecordError,
    FormatError,
    LayoutError,
    LmdbImageNet,
    OutputExistsError,
    convert,
)
from imagenet_pack.contract.format import LENGTH_KEY, META_DB, META_KEY


@pytest.mark.parametrize("split", ["train", "val"])
def test_round_trip_is_byte_exact_and_targets_equal_imagefolder(tree_session, db_session, split):
    ref = datasets.ImageFolder(str(tree_session / split))
    ds = LmdbImageNet(db_session, split)
    assert len(ds) == len(ref.samples) > 0
    assert list(ds.wnids) == ref.classes
    assert list(ds.targets) == ref.targets
    assert ds.wnid_to_idx == ref.class_to_idx
    for i, (path, target) in enumerate(ref.samples):
        record = ds.read_record(i)
        assert record.image == open(path, "rb").read(), f"record {i} bytes differ from {path}"
        assert record.target == target
    assert [p.split("/", 1)[1] for p in ds.paths] == [s[0].split(f"/{split}/", 1)[1] for s in ref.samples]


def test_pil_samples_equal_imagefolder_pixels(tree_session, db_session):
    ref = datasets.ImageFolder(str(tree_session / "train"))
    ds = LmdbImageNet(db_session, "train")
    for i in range(len(ds)):
        (a, ta), (b, tb) = ds[i], ref[i]
        assert a.mode == "RGB" and a.size == b.size and ta == tb
        diff = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))
        assert diff.mean() < 1.0, f"sample {i}: mean abs pixel difference {diff.mean():.2f}"


def test_tensor_decoder_gives_uint8_chw_rgb(db_session):
    pil = LmdbImageNet(db_session, "val")
    ds = LmdbImageNet(db_session, "val", decoder="tensor")
    image, target = ds[1]
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(np.array(pil[1][0])))
    assert target == int(ds.targets[1])


def test_class_names_follow_torchvision_imagenet(db_session):
    ds = LmdbImageNet(db_session, "train")
    assert ds.classes[0] == ("tench", "Tinca tinca")  # built-in table, name tuples as ImageNet.classes
    assert ds.class_to_idx["tench"] == 0 and ds.class_to_idx["Tinca tinca"] == 0


def _epoch_targets(loader):
    seen = []
    for images, targets in loader:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32)
        seen.extend(targets.tolist())
    return sorted(seen)


@pytest.mark.slow
@pytest.mark.parametrize("context", ["fork", "spawn"])
@pytest.mark.parametrize("persistent", [False, True])
def test_dataloader_workers_several_epochs(db_session, context, persistent):
    t = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()])
    ds = LmdbImageNet(db_session, "train", transform=t)
    ds[0]  # the parent opens its environment first: forked workers must still open their own
    loader = DataLoader(ds, batch_size=5, num_workers=2, multiprocessing_context=context,
                        persistent_workers=persistent, shuffle=True)
    for _ in range(2):  # the second epoch: workers started again (or kept), each opening its own environment
        assert _epoch_targets(loader) == sorted(ds.targets.tolist())


def test_instances_share_a_path(db_session):
    a = LmdbImageNet(db_session, "train", decoder="tensor")
    b = LmdbImageNet(db_session, "train", decoder="tensor")
    assert torch.equal(a[3][0], b[3][0])


# ---------------------------------------------------------------- errors


def test_missing_root_is_a_layout_error(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        convert(tmp_path / "nope", tmp_path / "out", ConvertOptions(progress=False))


def test_root_without_class_folders(tmp_path):
    (tmp_path / "src" / "train").mkdir(parents=True)
    with pytest.raises(LayoutError, match="no class folders"):
        convert(tmp_path / "src", tmp_path / "out", ConvertOptions(progress=False))


def test_root_without_splits_lists_what_it_saw(tmp_path):
    (tmp_path / "src" / "pictures").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"no known ImageNet layout.*saw \[.pictures.\]"):
        convert(tmp_path / "src", tmp_path / "out", ConvertOptions(progress=False))


def test_empty_class_folder(tree, tmp_path):
    (tree / "train" / "n99999999").mkdir()
    (tree / "train" / "n99999999" / "notes.txt").write_text("no images here")
    with pytest.raises(LayoutError, match="n99999999: class folder holds no image files"):
        convert(tree, tmp_path / "out", ConvertOptions(progress=False, workers=1))


def test_non_image_files_are_ignored_and_reported(tree, tmp_path):
    (tree / "train" / "n01440764" / ".DS_Store").write_bytes(b"\0\0")
    (tree / "train" / "n01440764" / "readme.txt").write_text("x")
    report = convert(tree, tmp_path / "out", ConvertOptions(progress=False, workers=1, splits=("train",)))
    (split,) = report.splits
    assert sorted(p.rsplit("/", 1)[1] for p, _ in split.ignored) == [".DS_Store", "readme.txt"]
    assert split.found == split.stored + len(split.skipped) + len(split.ignored)
    lines = report.report_path.read_text().splitlines()
    assert sum('"action": "ignored"' in line for line in lines) == 2


def test_complete_database_is_not_overwritten(tree_session, db):
    before = (db / "train" / "data.mdb").stat().st_mtime_ns
    again = convert(tree_session, db, ConvertOptions(progress=False, workers=1))  # the same command: a no-op
    assert again.noop and again.ok and all(r.already_complete for r in again.splits)
    assert (db / "train" / "data.mdb").stat().st_mtime_ns == before
    with pytest.raises(OutputExistsError, match="complete database made from other input or options.*--overwrite"):
        convert(tree_session, db, ConvertOptions(progress=False, workers=1, max_side=32))
    report = convert(tree_session, db, ConvertOptions(progress=False, workers=1, overwrite=True, max_side=32))
    assert report.ok and LmdbImageNet(db, "train").read_record(0).width <= 32


def test_incomplete_database_is_refused(db):
    put_meta(db / "train", LENGTH_KEY, None)
    with pytest.raises(FormatError, match="incomplete database.*rerun"):
        LmdbImageNet(db, "train")


def test_unknown_format_version_is_refused(db):
    env = lmdb.open(str(db / "val"), max_dbs=2, readonly=True, lock=False)
    with env.begin(db=env.open_db(META_DB, create=False)) as txn:
        meta = msgpack.unpackb(txn.get(META_KEY))
    env.close()
    meta["version"] = 99
    put_meta(db / "val", META_KEY, msgpack.packb(meta))
    with pytest.raises(FormatError, match="format version 99 is not supported"):
        LmdbImageNet(db, "val")


def test_missing_split_and_missing_db(db, tmp_path):
    with pytest.raises(FormatError, match="no split 'test'"):
        LmdbImageNet(db, "test")
    with pytest.raises(FormatError, match="no such database"):
        LmdbImageNet(tmp_path / "none", "train")


def test_checksum_mismatch_is_detected_not_decoded(tree_session, db):
    ds = LmdbImageNet(db, "val")
    victim = sorted((tree_session / "val").rglob("*.JPEG"))[2]
    index = [p.split("/", 1)[1] for p in ds.paths].index(str(victim.relative_to(tree_session / "val")))
    flip_payload_byte(db / "val", victim)
    ds = LmdbImageNet(db, "val")
    with pytest.raises(CorruptRecordError, match=r"record \d+: checksum mismatch"):
        ds[index]
    ds[(index + 1) % len(ds)]  # the others still read


def test_a_database_path_that_is_absent_or_a_file_says_which(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(FormatError, match="file: not a folder: a database is a folder of splits"):
        LmdbImageNet(tmp_path / "file", "train")
    with pytest.raises(FormatError, match="nope: no such database directory"):
        LmdbImageNet(tmp_path / "nope", "train")
