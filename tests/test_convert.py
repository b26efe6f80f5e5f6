"""Parallel, sharded, resumable, audited and verifiable conversion."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
import torch
import torchvision.io as tio
from helpers import flip_payload_byte, opts, put_meta, records
from PIL import Image

from imagenet_pack import CenterCropDecoder, FormatError, LmdbImageNet, OutputExistsError, convert, verify
from imagenet_pack.contract.format import LENGTH_KEY, RECORDS_DB, Record, decode_record, encode_key, encode_record
from imagenet_pack.sources.items import read_item as real_read
from imagenet_pack.synthetic import make_sample_tree
from imagenet_pack.write.writer import ShardWriter


def test_same_database_for_any_worker_and_shard_count(tree, tmp_path):
    convert(tree, tmp_path / "w1", opts(workers=1))
    convert(tree, tmp_path / "w2", opts(workers=2))
    convert(tree, tmp_path / "s3", opts(workers=2, shards=3))
    base = records(tmp_path / "w1")
    assert records(tmp_path / "w2") == base
    assert records(tmp_path / "s3") == base
    shards = sorted(p.name for p in (tmp_path / "s3" / "train").iterdir())
    assert shards == ["shard-000-of-003", "shard-001-of-003", "shard-002-of-003"]
    assert len(LmdbImageNet(tmp_path / "s3", "train")._shards) == 3


def test_map_grows_from_a_tiny_initial_map(tree, tmp_path):
    report = convert(tree, tmp_path / "db", opts(workers=1, initial_map_size=1 << 20, batch_bytes=16 << 10))
    assert report.ok
    env = lmdb.open(str(tmp_path / "db" / "train"), readonly=True, lock=False, max_dbs=2)
    assert env.info()["map_size"] > 1 << 20
    env.close()
    convert(tree, tmp_path / "ref", opts(workers=1))
    assert records(tmp_path / "db") == records(tmp_path / "ref")


def _kill_during_convert(src: Path, dst: Path, grown: int) -> None:
    """Run the CLI and SIGKILL its whole process group once data.mdb has grown past ``grown`` bytes."""
    cmd = [sys.executable, "-m", "imagenet_pack.cli", "convert", str(src), str(dst), "--workers", "2",
           "--no-progress", "--commit-mb", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = dst / "train" / "data.mdb"
    while proc.poll() is None and not (data.exists() and data.stat().st_size > grown):
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    src = make_sample_tree(tmp_path / "src", classes=6, train_per_class=60, val_per_class=10, size=(160, 220))
    convert(src, tmp_path / "ref", opts(workers=2))
    dst = tmp_path / "killed"
    for grown in (1 << 20, 2 << 20, 3 << 20):
        _kill_during_convert(src, dst, grown)
    with pytest.raises(FormatError, match="incomplete"):
        LmdbImageNet(dst, "train")
    convert(src, dst, opts(workers=2, batch_bytes=64 << 10))
    for split in ("train", "val"):
        assert records(dst, split) == records(tmp_path / "ref", split)
    assert verify(dst).ok


def test_resume_continues_from_the_last_commit(tree, tmp_path, monkeypatch):
    """Records committed before an interruption are kept, and their files are not read again."""
    dst = tmp_path / "db"

    def interrupted(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ShardWriter, "finish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(tree, dst, opts(workers=1, splits=("train",), batch_bytes=4 << 10))
    monkeypatch.undo()
    with pytest.raises(FormatError, match="incomplete"):
        LmdbImageNet(dst, "train")
    from imagenet_pack.write import tasks
    read = []
    monkeypatch.setattr(tasks, "read_item", lambda item, limit: (read.append(item.path), real_read(item, limit))[1])
    report = convert(tree, dst, opts(workers=1, splits=("train",)))
    assert report.ok and not report.splits[0].skipped and read == []  # every record was committed: none read
    assert len(LmdbImageNet(dst, "train")) == 24


def test_resume_converts_again_from_the_first_file_changed_since(tree, tmp_path, monkeypatch):
    dst = tmp_path / "db"
    monkeypatch.setattr(ShardWriter, "finish", lambda self, *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        convert(tree, dst, opts(workers=1, splits=("train",), batch_bytes=4 << 10))
    monkeypatch.undo()
    files = sorted((tree / "train").rglob("*.JPEG"))
    files[5].write_bytes(files[5].read_bytes() + b"\0")  # edited after it was converted: its size changed
    report = convert(tree, dst, opts(workers=1, splits=("train",)))
    assert report.ok
    changed = [w for w in report.splits[0].warnings if "changed since they were converted" in w]
    assert len(changed) == 1 and f"train/{files[5].parent.name}/{files[5].name}" in changed[0]
    assert LmdbImageNet(dst, "train").read_record(5).image == files[5].read_bytes()
    os.utime(files[7], ns=(0, 0))  # and a complete database whose source changed is not silently kept
    name = f"train/{files[7].parent.name}/{files[7].name}"
    with pytest.raises(OutputExistsError, match=rf"1 source file\(s\) changed .*\({name}\).* --overwrite"):
        convert(tree, dst, opts(workers=1, splits=("train",)))


def odd_inputs(folder: Path) -> dict[str, str]:
    """Write one file per odd case into ``folder``; returns name -> expected action."""
    rng = np.random.default_rng(1)
    rgb = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
    rgb = cv2.GaussianBlur(rgb, (0, 0), 2)
    ok, png = cv2.imencode(".png", rgb)
    (folder / "png_named.JPEG").write_bytes(png.tobytes())
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.JPEG", quality=90)
    Image.fromarray(rgb).convert("L").save(folder / "grey.JPEG", quality=90)
    Image.fromarray(rgb).save(folder / "progressive.JPEG", quality=90, progressive=True)
    (folder / "empty.JPEG").write_bytes(b"")
    good = cv2.imencode(".jpg", rgb)[1].tobytes()
    (folder / "truncated.JPEG").write_bytes(good[: len(good) // 2])
    (folder / "random.JPEG").write_bytes(rng.bytes(5000))
    bomb = bytearray(good)
    sof = bomb.find(b"\xff\xc0")
    bomb[sof + 5:sof + 9] = (65000).to_bytes(2, "big") * 2
    (folder / "bomb.JPEG").write_bytes(bytes(bomb))
    return {"png_named.JPEG": "fixed", "cmyk.JPEG": "fixed", "grey.JPEG": "stored", "progressive.JPEG": "stored",
            "empty.JPEG": "skipped", "truncated.JPEG": "skipped", "random.JPEG": "skipped", "bomb.JPEG": "skipped"}


def test_odd_and_bad_inputs_follow_the_policy(tree, tmp_path):
    folder = tree / "train" / "n01440764"
    expected = odd_inputs(folder)
    dst = tmp_path / "db"
    report = convert(tree, dst, opts(workers=2, splits=("train",)))
    (split,) = report.splits
    assert not report.ok and not split.complete  # skipped images: not finished without --skip-bad
    lines = [json.loads(line) for line in report.report_path.read_text().splitlines()]
    actions = {Path(e["path"]).name: e for e in lines}
    for name, action in expected.items():
        if action == "stored":
            assert name not in actions
        else:
            assert actions[name]["action"] == action, (name, actions[name])
    assert "CMYK" in actions["cmyk.JPEG"]["reason"] and "PNG" in actions["png_named.JPEG"]["reason"]
    assert "truncated" in actions["truncated.JPEG"]["reason"]
    assert "65000x65000" in actions["bomb.JPEG"]["reason"]
    assert "empty" in actions["empty.JPEG"]["reason"]
    assert "not an image" in actions["random.JPEG"]["reason"]
    assert split.found == split.stored + len(split.skipped) + len(split.ignored) == 24 + 8
    with pytest.raises(Exception, match="incomplete"):
        LmdbImageNet(dst, "train")
    # accepting the loss finishes the same database without re-reading anything
    report = convert(tree, dst, opts(workers=2, splits=("train",), skip_bad=True))
    assert report.ok
    ds = LmdbImageNet(dst, "train")
    assert len(ds) == 24 + 4
    for i in range(len(ds)):  # every stored record decodes to 3 channels with OpenCV and torchvision
        data = ds.read_record(i).image
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[2] == 3
        assert tio.decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=tio.ImageReadMode.RGB).shape[0] == 3
    by_name = {Path(p).name: i for i, p in enumerate(ds.paths)}
    cmyk = np.asarray(ds[by_name["cmyk.JPEG"]][0], np.float32)
    ref = np.asarray(Image.open(folder / "cmyk.JPEG").convert("RGB"), np.float32)
    assert np.abs(cmyk - ref).mean() < 6
    assert ds.read_record(by_name["grey.JPEG"]).image == (folder / "grey.JPEG").read_bytes()


def test_max_side_resizes_and_says_the_stored_size(tmp_path):
    src = make_sample_tree(tmp_path / "src", classes=2, train_per_class=3, val_per_class=1, size=(150, 200))
    dst = tmp_path / "db"
    convert(src, dst, opts(workers=1, max_side=64, quality=80))
    ds = LmdbImageNet(dst, "train", decoder="tensor")
    for i in range(len(ds)):
        record = ds.read_record(i)
        assert max(record.height, record.width) == 64
        assert tuple(ds.sizes[i]) == (record.height, record.width) in ((48, 64), (64, 48))  # the stored size
        assert ds[i][0].shape[1:] == (record.height, record.width)
    assert verify(dst, decode=True, source=src).ok


def test_verify_catches_flipped_byte_missing_length_and_wrong_target(tree_session, db):
    assert verify(db, decode=True, source=tree_session).ok
    victim = sorted((tree_session / "val").rglob("*.JPEG"))[4]
    flip_payload_byte(db / "val", victim)
    report = verify(db)
    assert not report.ok and any("checksum mismatch" in p for p in report.problems)
    put_meta(db / "train", LENGTH_KEY, None)
    assert any("incomplete database" in p for p in verify(db).problems)


def test_verify_catches_a_wrong_target(db):
    env = lmdb.open(str(db / "train"), max_dbs=2)
    records_db = env.open_db(RECORDS_DB)
    with env.begin(write=True, db=records_db) as txn:
        record = decode_record(txn.get(encode_key(5)), "test")
        txn.put(encode_key(5), encode_record(Record(record.image, record.target + 1, record.height, record.width))[0])
    env.close()
    problems = verify(db).problems
    assert any("record 5: target" in p and "differs from the metadata" in p for p in problems)


@pytest.mark.slow  # seconds: whole conversions, many files
def test_audit_warns_for_a_full_class_list_with_other_counts(tmp_path):
    src = make_sample_tree(tmp_path / "src", classes=1000, train_per_class=1, val_per_class=1, size=(16, 16))
    report = convert(src, tmp_path / "db", opts(workers=2))
    val = next(r for r in report.splits if r.split == "val")
    assert val.warnings == ["val: 1000 images, ILSVRC2012 has 50000; 1000 of its 1000 classes hold another count "
                            "(each listed in the report)"]  # one line, whatever the number of classes
    counts = [json.loads(line) for line in report.report_path.read_text().splitlines()]
    counts = [c for c in counts if c["action"] == "count" and c["split"] == "val"]
    assert len(counts) == 1000 and counts[0] == {"split": "val", "action": "count", "wnid": "n01440764",
                                                  "images": 1, "ilsvrc2012": 50}
    train = [json.loads(line) for line in report.report_path.read_text().splitlines()]
    train = [c for c in train if c["action"] == "count" and c["split"] == "train"]  # class folders: no devkit
    assert len(train) == 1000 and train[0]["images"] == 1 and train[0]["ilsvrc2012"] == "732..1300"


@pytest.mark.slow  # seconds: whole conversions, many files
def test_a_no_op_rerun_reports_the_counts_without_warning_again(tmp_path, caplog):
    src = make_sample_tree(tmp_path / "src", classes=1000, train_per_class=1, val_per_class=0, size=(16, 16))
    with caplog.at_level("WARNING"):
        convert(src, tmp_path / "db", opts(workers=2, splits=("train",)))
    assert sum("ILSVRC2012 has" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level("WARNING"):
        again = convert(src, tmp_path / "db", opts(workers=2, splits=("train",)))
    assert again.noop and not any("ILSVRC2012 has" in r.getMessage() for r in caplog.records)
    assert again.splits[0].warnings and len(again.splits[0].class_counts) == 1000  # still in its report


def test_a_file_changed_or_removed_between_worker_and_writer_is_an_error(tree, tmp_path, monkeypatch):
    """The parent re-reads unchanged files from the page cache; one replaced or deleted meanwhile is a one-line
    error (the rerun resumes), never a traceback or another file's bytes under this record."""
    from imagenet_pack.errors import ImagenetPackError
    from imagenet_pack.write import split

    victim, gone = sorted((tree / "train").rglob("*.JPEG"))[3:5]
    real = split.read_item

    def edited(item, limit):
        if item.file == str(victim):
            data = victim.read_bytes()
            victim.write_bytes(data[:-10] + b"0123456789")  # same size, new content and mtime
            os.utime(victim, ns=(10**18, 10**18))
        return real(item, limit)

    monkeypatch.setattr(split, "read_item", edited)
    with pytest.raises(ImagenetPackError, match="changed or vanished while it was being converted"):
        convert(tree, tmp_path / "a", opts(splits=("train",), workers=2))

    def removed(item, limit):
        if item.file == str(gone):
            gone.unlink()
        return real(item, limit)

    monkeypatch.setattr(split, "read_item", removed)
    with pytest.raises(ImagenetPackError, match="changed or vanished while it was being converted"):
        convert(tree, tmp_path / "b", opts(splits=("train",), workers=2))


def test_short_side_stores_torchvisions_resize_and_val_is_then_a_centre_crop_of_it(tmp_path):
    """--short-side 256: the shorter side becomes 256 (smaller images are kept as they are), the longer
    int(256 * long / short), the pixels PIL's Resize(256) up to the JPEG re-encoding; and the val decoder's
    sample is then the centre 224 of the stored image."""
    from helpers import photo_tree
    from torchvision import transforms
    src = photo_tree(tmp_path / "src", [(375, 500), (500, 333), (300, 257), (200, 180), (256, 400)], split="val")
    convert(src, tmp_path / "db", opts(splits=("val",), short_side=256))
    ds = LmdbImageNet(tmp_path / "db", "val", decoder="tensor")
    originals = [Image.open(src / "val" / p.split("/", 1)[1]) for p in ds.paths]
    for i, image in enumerate(originals):
        w, h = image.size
        short = min(h, w)
        want = (h, w) if short <= 256 else ((256, int(256 * w / h)) if h <= w else (int(256 * h / w), 256))
        assert tuple(ds.sizes[i]) == want and ds[i][0].shape[1:] == want
        if short > 256:
            resized = np.asarray(transforms.Resize(256)(image.convert("RGB")), np.float32)
            assert np.abs(ds[i][0].permute(1, 2, 0).numpy().astype(np.float32) - resized).mean() < 2.5
    val = LmdbImageNet(tmp_path / "db", "val", decoder=CenterCropDecoder(224))
    for i in range(len(val)):
        stored = ds[i][0]
        crop = transforms.CenterCrop(224)(transforms.Resize(256)(stored))
        assert (val[i][0].float() - crop.float()).abs().mean() < 0.5


@pytest.mark.slow  # seconds: whole conversions, many files
def test_a_rerun_after_fixing_a_bad_file_leaves_the_shard_no_larger_than_a_clean_conversion(tmp_path, monkeypatch):
    """The bad file sorts first, so fixing it makes the rerun store every record again: LMDB can seldom reuse
    the pages the first copies leave free for new multi-page records, so the shard is compacted when it
    finishes (through a copy renamed over it) and ends within a few percent of a clean conversion's size."""
    tree = make_sample_tree(tmp_path / "imagenet", classes=2, train_per_class=12, val_per_class=0,
                            size=(200, 260), seed=5)
    first = sorted((tree / "train").rglob("*.JPEG"))[0]
    good = first.read_bytes()
    bad = first.with_name("a_" + first.name)
    bad.write_bytes(good[:len(good) // 3])  # truncated: the conversion stops, unfinished
    options = opts(splits=("train",))
    assert not convert(tree, tmp_path / "db", options).ok
    bad.write_bytes(good)  # fixed
    clean = convert(tree, tmp_path / "clean", options)
    size = lambda db: (db / "train" / "data.mdb").stat().st_size  # noqa: E731
    monkeypatch.setattr(ShardWriter, "SLACK", float("inf"))  # what the rerun leaves without compaction ...
    kept = tmp_path / "kept"
    shutil.copytree(tmp_path / "db", kept)
    assert convert(tree, kept, options).ok and size(kept) > 1.3 * size(tmp_path / "clean")
    monkeypatch.undo()
    assert convert(tree, tmp_path / "db", options).ok and clean.ok  # ... and with it
    assert size(tmp_path / "db") <= 1.05 * size(tmp_path / "clean")
    assert records(tmp_path / "db") == records(tmp_path / "clean")
    assert not list((tmp_path / "db").rglob("*.compacting"))


@pytest.mark.slow  # seconds: whole conversions, many files
def test_a_compaction_killed_before_its_rename_leaves_a_copy_the_next_run_removes(tree, tmp_path, monkeypatch):
    """The copy is ours by name and kind (a plain file of this user's) and the shard whole without it: the next
    run that opens the shard removes it; a link of that name is refused and left alone."""
    from imagenet_pack.errors import UnsafeOutputError
    dst = tmp_path / "db"
    monkeypatch.setattr(ShardWriter, "finish", lambda self, *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        convert(tree, dst, opts(splits=("train",)))
    monkeypatch.undo()
    stale = dst / "train" / "data.mdb.compacting"
    stale.write_bytes(b"half a copy")
    target = tmp_path / "precious"
    target.write_bytes(b"keep")
    stale.rename(tmp_path / "moved")
    stale.symlink_to(target)
    with pytest.raises((UnsafeOutputError, OutputExistsError), match="data.mdb.compacting"):
        convert(tree, dst, opts(splits=("train",)))
    assert target.read_bytes() == b"keep"
    stale.unlink()
    (tmp_path / "moved").rename(stale)
    assert convert(tree, dst, opts(splits=("train",))).ok and not stale.exists()
    assert records(dst) == records(_clean(tree, tmp_path))


def _clean(tree: Path, tmp_path: Path) -> Path:
    convert(tree, tmp_path / "clean", opts(splits=("train",)))
    return tmp_path / "clean"
