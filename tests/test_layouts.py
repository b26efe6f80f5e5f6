"""Flat val + devkit, the official tars read in place, Kaggle's layout; torchvision as the oracle."""
from __future__ import annotations

import io
import os
import random
import tarfile
from pathlib import Path

import pytest
from helpers import add_member as _add
from helpers import devkit_bytes, small_tree
from torchvision.datasets import ImageFolder
from torchvision.datasets import imagenet as tvi

from imagenet_pack import ConvertOptions, LayoutError, LmdbImageNet, convert
from imagenet_pack.sources.detect import detect
from imagenet_pack.sources.synsets import builtin_names

WNIDS = sorted(builtin_names())


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same images in four layouts, and torchvision's own val labels for them."""
    base = tmp_path_factory.mktemp("layouts")
    tree = small_tree(base / "tree", classes=5, per_class=4)
    train = [(p.parent.name, p.name, p.read_bytes()) for p in sorted((tree / "train").rglob("*.JPEG"))]
    val_src = [(p.parent.name, p.read_bytes()) for p in sorted((tree / "val").rglob("*.JPEG"))]
    random.Random(1).shuffle(val_src)
    val = [(w, f"ILSVRC2012_val_{i + 1:08d}.JPEG", data) for i, (w, data) in enumerate(val_src)]
    id_order = WNIDS[:]
    random.Random(2).shuffle(id_order)  # ILSVRC2012_ID order is not sorted-wnid order
    devkit = devkit_bytes(id_order, [w for w, _, _ in val])

    archives = base / "archives"
    archives.mkdir()
    with tarfile.open(archives / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in sorted({w for w, _, _ in train}):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for w, name, data in train:
                    if w == wnid:
                        _add(t, name, data)
            _add(outer, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(archives / "ILSVRC2012_img_val.tar", "w") as t:
        for _, name, data in val:
            _add(t, name, data)
    (archives / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(devkit)

    extracted = base / "extracted"
    for w, name, data in train:
        (extracted / "train" / w).mkdir(parents=True, exist_ok=True)
        (extracted / "train" / w / name).write_bytes(data)
    (extracted / "val").mkdir()
    for _, name, data in val:
        (extracted / "val" / name).write_bytes(data)
    (extracted / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(devkit)

    kaggle = base / "kaggle"
    data = kaggle / "ILSVRC" / "Data" / "CLS-LOC"
    for w, name, blob in train:
        (data / "train" / w).mkdir(parents=True, exist_ok=True)
        (data / "train" / w / name).write_bytes(blob)
    (data / "val").mkdir(parents=True)
    rows = ["ImageId,PredictionString"]
    for w, name, blob in val:
        (data / "val" / name).write_bytes(blob)
        rows.append(f"{name[:-5]},{w} 10 20 200 300 {w} 5 5 50 60 ")
    (kaggle / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (kaggle / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {', '.join(builtin_names()[w])}\n" for w in WNIDS))

    oracle = base / "oracle"
    oracle.mkdir()
    (oracle / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(devkit)
    tvi._verify_archive = lambda *a, **k: None  # our devkit is not the published file, so its md5 differs
    tvi.parse_devkit_archive(str(oracle))
    wnid_to_classes, val_wnids = tvi.load_meta_file(str(oracle))
    tv_index = {w: i for i, w in enumerate(sorted(wnid_to_classes))}
    return {"base": base, "tree": tree, "archives": archives, "extracted": extracted, "kaggle": kaggle,
            "val": val, "val_targets": {name: tv_index[val_wnids[i]] for i, (_, name, _) in enumerate(val)},
            "train_targets": {name: tv_index[w] for w, name, _ in train}}


@pytest.mark.parametrize("layout", ["archives", "extracted", "kaggle"])
def test_targets_equal_torchvision(layouts, layout, tmp_path):
    report = convert(layouts[layout], tmp_path / "db", ConvertOptions(workers=2, progress=False))
    assert report.ok
    val = LmdbImageNet(tmp_path / "db", "val")
    assert len(val.wnids) == 1000 and val.wnids == WNIDS
    assert {Path(p).name: int(t) for p, t in zip(val.paths, val.targets)} == layouts["val_targets"]
    train = LmdbImageNet(tmp_path / "db", "train")
    assert {Path(p).name: int(t) for p, t in zip(train.paths, train.targets)} == layouts["train_targets"]
    by_name = {name: data for _, name, data in layouts["val"]}
    assert all(val.read_record(i).image == by_name[Path(p).name] for i, p in enumerate(val.paths))
    assert val.classes[0] == ("tench", "Tinca tinca")
    # one table of names whatever the layout: torchvision ImageNet's (the devkit's words)
    for wnid, names in (("n02012849", ("crane",)), ("n03126707", ("crane",)), ("n03710637", ("maillot",)),
                        ("n03710721", ("maillot", "tank suit"))):
        assert val.classes[val.wnid_to_idx[wnid]] == names


def test_detection(layouts):
    assert detect(layouts["archives"]) == "archives"
    assert detect(layouts["extracted"]) == "devkit"
    assert detect(layouts["kaggle"]) == "kaggle"
    assert detect(layouts["tree"]) == "folders"


def test_plain_tree_targets_equal_imagefolder(layouts, tmp_path):
    convert(layouts["tree"], tmp_path / "db", ConvertOptions(workers=1, progress=False))
    assert list(LmdbImageNet(tmp_path / "db", "train").targets) == ImageFolder(str(layouts["tree"] / "train")).targets


def _snapshot(root: Path, skip: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if skip not in p.parents and p != skip}


def test_tars_give_the_extracted_database_and_write_no_image(layouts, tmp_path):
    before = _snapshot(layouts["base"], tmp_path)
    tmp_before = set(os.listdir("/tmp"))
    convert(layouts["archives"], tmp_path / "tar", ConvertOptions(workers=2, progress=False))
    assert _snapshot(layouts["base"], tmp_path) == before
    assert not any(n.endswith(".JPEG") for n in set(os.listdir("/tmp")) - tmp_before)
    left = (p for p in (tmp_path / "tar").rglob("*") if p.is_file() and p.suffix not in (".mdb", ".lock"))
    assert sorted(p.name for p in left) == ["convert-report.jsonl"]
    convert(layouts["extracted"], tmp_path / "dir", ConvertOptions(workers=1, progress=False))
    for split in ("train", "val"):
        a, b = LmdbImageNet(tmp_path / "tar", split), LmdbImageNet(tmp_path / "dir", split)
        assert a.paths == b.paths and list(a.targets) == list(b.targets)
        assert all(a.read_record(i) == b.read_record(i) for i in range(len(a)))


def test_missing_ground_truth(layouts, tmp_path):
    src = tmp_path / "src"
    (src / "val").mkdir(parents=True)
    for _, name, data in layouts["val"]:
        (src / "val" / name).write_bytes(data)
    with pytest.raises(LayoutError, match="flat validation images need the devkit"):
        convert(src, tmp_path / "db", ConvertOptions(progress=False))
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(devkit_bytes(WNIDS, [])), mode="r:gz") as full, \
            tarfile.open(fileobj=buf, mode="w:gz") as out:
        meta = full.getmember("ILSVRC2012_devkit_t12/data/meta.mat")
        out.addfile(meta, full.extractfile(meta))
    (src / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(buf.getvalue())
    with pytest.raises(LayoutError, match="no data/ILSVRC2012_validation_ground_truth.txt"):
        convert(src, tmp_path / "db", ConvertOptions(progress=False))


def test_ground_truth_shorter_than_the_file_list(layouts, tmp_path):
    src = tmp_path / "src"
    (src / "val").mkdir(parents=True)
    for _, name, data in layouts["val"]:
        (src / "val" / name).write_bytes(data)
    short = [w for w, _, _ in layouts["val"]][:-2]
    (src / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(devkit_bytes(WNIDS, short))
    with pytest.raises(LayoutError, match=r"ground truth has \d+ lines, but ILSVRC2012_val_\d+\.JPEG needs line"):
        convert(src, tmp_path / "db", ConvertOptions(progress=False))


def test_wnid_unknown_to_meta_mat(layouts, tmp_path):
    src = tmp_path / "src"
    (src / "train" / "n99999999").mkdir(parents=True)
    (src / "train" / "n99999999" / "x.JPEG").write_bytes(layouts["val"][0][2])
    (src / "val").mkdir()
    (src / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(layouts["val"][0][2])
    (src / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(devkit_bytes(WNIDS, [WNIDS[0]]))
    with pytest.raises(LayoutError, match=r"n99999999.*not among the 1000 known wnids"):
        convert(src, tmp_path / "db", ConvertOptions(progress=False))
    (src / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(devkit_bytes(WNIDS, [], extra_truth=[1500]))
    with pytest.raises(LayoutError, match="ILSVRC2012_ID 1500, which is not one of meta.mat's 1000 classes"):
        convert(src, tmp_path / "db", ConvertOptions(progress=False, splits=("val",)))


def test_tar_member_with_dotdot_is_refused(layouts, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / "ILSVRC2012_img_val.tar", "w") as t:
        _add(t, "../evil.JPEG", layouts["val"][0][2])
    (src / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(devkit_bytes(WNIDS, [WNIDS[0]]))
    with pytest.raises(LayoutError, match=r"tar member '\.\./evil\.JPEG' has a directory part or '\.\.'"):
        convert(src, tmp_path / "db", ConvertOptions(progress=False))
    assert not (tmp_path / "evil.JPEG").exists()


def test_nothing_recognisable_lists_expectations(tmp_path):
    (tmp_path / "src" / "photos").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"no known ImageNet layout; expected .*ILSVRC2012_img_train\.tar.*saw"):
        convert(tmp_path / "src", tmp_path / "db", ConvertOptions(progress=False))
