"""Hostile inputs: no link, device file, crafted JPEG, damaged page or archive can make the converter or the
reader destroy what they did not write, hang, crash, or store or return garbage."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cv2
import lmdb
import msgpack
import numpy as np
import pytest
from helpers import cli, opts, photo, records, small_tree, write_jpeg

from imagenet_pack import (
    CorruptRecordError,
    FormatError,
    ImagenetPackError,
    LayoutError,
    LmdbImageNet,
    OutputExistsError,
    UnsafeOutputError,
    convert,
    verify,
)
from imagenet_pack.contract.format import RECORDS_DB, Record, decode_record, encode_key, encode_record
from imagenet_pack.demo import run_demo
from imagenet_pack.sources.items import Item, NotRegularFile, read_item


def _jpeg(rgb: np.ndarray, *params: int) -> bytes:
    return cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90, *params])[1].tobytes()


# ------------------------------------------------------------------ writing only what is ours


@pytest.mark.parametrize("planted", ["lock", "shard-lock", "report", "data", "lockmdb", "split", "hardlink"])
def test_a_link_planted_in_dst_is_never_written_through(tree, tmp_path, planted):
    precious = tmp_path / "precious"
    precious.write_text("someone else's file\n")
    dst = tmp_path / "db"
    dst.mkdir()
    target = {"lock": dst / ".imagenet-pack.lock", "shard-lock": dst / ".imagenet-pack.lock",
              "report": dst / "convert-report.jsonl", "data": dst / "train" / "data.mdb",
              "lockmdb": dst / "train" / "lock.mdb", "split": dst / "train",
              "hardlink": dst / ".imagenet-pack.lock"}[planted]
    target.parent.mkdir(parents=True, exist_ok=True)
    if planted == "split":
        other = tmp_path / "elsewhere"
        other.mkdir()
        os.symlink(other, target)
    elif planted == "hardlink":
        os.link(precious, target)
    else:
        os.symlink(precious, target)
    result = cli("convert", tree, dst, "--no-progress", "--workers", "1")
    assert precious.read_text() == "someone else's file\n"
    assert "Traceback" not in result.stderr
    if planted == "split":
        assert not any((tmp_path / "elsewhere").iterdir())
    if planted == "report":  # replaced by a new file (the link itself), the run succeeds
        assert result.returncode == 0 and not target.is_symlink()
    else:
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert "link" in result.stderr


def test_overwrite_never_deletes_through_a_linked_split_folder(tree, tmp_path):
    victim = tmp_path / "victim-db"
    convert(tree, victim, opts())
    before = sorted(p.name for p in (victim / "train").iterdir())
    dst = tmp_path / "db"
    dst.mkdir()
    os.symlink(victim / "train", dst / "train")
    with pytest.raises(UnsafeOutputError, match="is a symbolic link"):
        convert(tree, dst, opts(overwrite=True, max_side=32))
    assert sorted(p.name for p in (victim / "train").iterdir()) == before and len(LmdbImageNet(victim, "train"))


@pytest.mark.slow
def test_demo_writes_only_into_a_new_or_empty_folder(tmp_path):
    d = tmp_path / "data"
    (d / "imagenet" / "train" / "n01440764").mkdir(parents=True)
    real = d / "imagenet" / "train" / "n01440764" / "n01440764_0.JPEG"
    real.write_bytes(_jpeg(photo(40, 50, 1)))
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    with pytest.raises(ImagenetPackError, match="not an empty folder"):
        run_demo(d, classes=2, per_class=2, workers=1, echo=lambda line: None)
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before
    result = cli("demo", "--dir", d, "--classes", "2", "--per-class", "2", "--workers", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_an_environment_killed_before_its_first_commit_is_ours_to_resume_or_replace(tree, tmp_path):
    """LMDB creates data.mdb before anything is committed: a kill right then leaves a file that holds
    nothing, which a rerun takes up (with or without --overwrite) instead of refusing it as foreign."""
    for how in ("empty", "no-commit"):
        dst = tmp_path / how
        (dst / "train").mkdir(parents=True)
        if how == "empty":
            (dst / "train" / "data.mdb").write_bytes(b"")
        else:
            lmdb.open(str(dst / "train"), max_dbs=3).close()
        assert convert(tree, dst, opts()).ok
        assert records(dst) == records(dst)  # readable
    dst = tmp_path / "again"
    (dst / "train").mkdir(parents=True)
    lmdb.open(str(dst / "train"), max_dbs=3).close()
    assert convert(tree, dst, opts(overwrite=True)).ok


# ------------------------------------------------------------------ reading only regular files, bounded


def test_devices_fifos_and_broken_links_are_listed_never_read(tree, tmp_path):
    folder = next((tree / "train").iterdir())
    os.symlink("/dev/zero", folder / "zz_zero.JPEG")
    os.mkfifo(folder / "zz_fifo.JPEG")
    os.symlink(tmp_path / "nowhere.JPEG", folder / "zz_dangling.JPEG")
    os.symlink(folder, folder / "loop")  # a folder link back to itself: listed once, not walked forever
    started = time.perf_counter()
    report = convert(tree, tmp_path / "db", opts(workers=2, splits=("train",)))
    assert time.perf_counter() - started < 30 and report.ok
    ignored = dict(report.splits[0].ignored)
    rel = f"train/{folder.name}"
    assert ignored[f"{rel}/zz_zero.JPEG"] == "a character device, not a regular file"
    assert ignored[f"{rel}/zz_fifo.JPEG"] == "a FIFO (named pipe), not a regular file"
    assert ignored[f"{rel}/zz_dangling.JPEG"] == "a broken symbolic link"
    assert "loops back" in ignored[f"{rel}/loop"]


def test_a_read_refuses_what_is_not_a_regular_file_and_never_exceeds_its_limit(tmp_path):
    fifo = tmp_path / "fifo.JPEG"
    os.mkfifo(fifo)
    started = time.perf_counter()
    with pytest.raises(NotRegularFile, match="FIFO"):
        read_item(Item("x", 0, str(fifo)), 1 << 20)  # opened without blocking: no writer needed
    with pytest.raises(NotRegularFile, match="character device"):
        read_item(Item("x", 0, "/dev/zero"), 1 << 20)
    assert time.perf_counter() - started < 5
    big = tmp_path / "big.JPEG"
    big.write_bytes(bytes(5000))
    with pytest.raises(OSError, match="limit"):
        read_item(Item("x", 0, str(big), size=10), 4096)  # whatever the scan said, the read is bounded
    with pytest.raises(OSError, match="cut short"):
        read_item(Item("x", 0, str(big), offset=4990, size=100), 4096)  # a tar member past the end


# ------------------------------------------------------------------ JPEGs that would cost or lie


def test_damaged_jpegs_that_still_end_with_eoi_are_not_stored_as_good_images(tree, tmp_path):
    folder = next((tree / "train").iterdir())
    good = _jpeg(photo(120, 160, 3))
    cut = good[:int(len(good) * 0.3)] + b"\xff\xd9"
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x5A
    restart = bytearray(_jpeg(photo(120, 160, 4), cv2.IMWRITE_JPEG_RST_INTERVAL, 2))
    at = restart.find(b"\xff\xd0", 600)
    restart[at + 1] = 0xD5  # a restart marker out of sequence
    for name, data in (("zz_cut", cut), ("zz_flip", bytes(flipped)), ("zz_rst", bytes(restart))):
        (folder / f"{name}.JPEG").write_bytes(data)
    report = convert(tree, tmp_path / "db", opts(splits=("train",), skip_bad=True))
    skipped = dict(report.splits[0].skipped)
    for name in ("zz_cut", "zz_flip", "zz_rst"):
        assert "damaged JPEG: libjpeg says" in skipped[f"train/{folder.name}/{name}.JPEG"], skipped
    kept = convert(tree, tmp_path / "kept", opts(splits=("train",), keep_damaged=True))
    assert kept.ok and not kept.splits[0].skipped
    fixed = dict(kept.splits[0].fixed)
    assert all("damaged JPEG (libjpeg:" in fixed[f"train/{folder.name}/{n}.JPEG"] for n in ("zz_cut", "zz_flip"))
    ds = LmdbImageNet(tmp_path / "kept", "train")
    index = ds.paths.index(f"train/{folder.name}/zz_cut.JPEG")
    assert ds.read_record(index).image != cut  # stored as it decodes, re-encoded: a clean JPEG for any decoder


def test_verify_decode_calls_a_stored_damaged_jpeg_damaged(db):
    env = lmdb.open(str(db / "train"), max_dbs=3)
    with env.begin(write=True, db=env.open_db(RECORDS_DB)) as txn:
        record = decode_record(txn.get(encode_key(2)), "t")
        cut = record.image[:len(record.image) // 3] + b"\xff\xd9"
        txn.put(encode_key(2), encode_record(Record(cut, record.target, record.height, record.width))[0])
    env.close()
    assert verify(db).ok  # the record itself is intact: its checksum covers what is stored
    problems = verify(db, decode=True).problems
    assert len(problems) == 1 and "record 2: libjpeg finds the image damaged" in problems[0]


@pytest.mark.slow  # seconds: whole conversions, many files
def test_names_that_are_not_utf8_on_fixed_and_skipped_files_finish_the_conversion(tree, tmp_path):
    folder = os.fsencode(next((tree / "train").iterdir()))
    ok, png = cv2.imencode(".png", np.full((40, 50, 3), 120, np.uint8))
    open(folder + b"/fixed_\xfe.JPEG", "wb").write(png.tobytes())
    open(folder + b"/empty_\xfd.JPEG", "wb").close()
    result = cli("convert", tree, tmp_path / "db", "--skip-bad", "--no-progress", "--workers", "1")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    ds = LmdbImageNet(tmp_path / "db", "train")
    assert any(os.fsencode(p).endswith(b"fixed_\xfe.JPEG") for p in ds.paths)
    assert "empty_\\udcfd.JPEG" in (tmp_path / "db" / "convert-report.jsonl").read_text()
    again = cli("convert", tree, tmp_path / "db", "--skip-bad", "--no-progress")  # and the no-op rerun
    assert again.returncode == 0 and "nothing to do" in again.stdout
    os.mkdir(os.fsencode(tree / "train") + b"/n0\xff")
    bad = cli("convert", tree, tmp_path / "other", "--no-progress")
    assert bad.returncode == 1 and "is not a UTF-8 name" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------------ archives


def _tar(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1600000000
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def archives(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """The official archive layout: a train tar of per-class tars, and the devkit."""
    pytest.importorskip("scipy")
    import scipy.io
    root = tmp_path / "archives"
    root.mkdir()
    wnids = ["n01440764", "n01443537", "n01484850"]
    synsets = np.array([(i + 1, w, w, 0, 2) for i, w in enumerate(wnids)],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O"),
                              ("num_train_images", "O")])
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    devkit = io.BytesIO()
    with tarfile.open(fileobj=devkit, mode="w:gz") as tar:
        for name, data in (("ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue()),):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (root / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(devkit.getvalue())
    inner = {w: _tar([(f"{w}_{k}.JPEG", _jpeg(photo(30, 40, 10 * i + k))) for k in range(2)])
             for i, w in enumerate(wnids)}
    (root / "ILSVRC2012_img_train.tar").write_bytes(_tar([(f"{w}.tar", data) for w, data in inner.items()]))
    return root, inner


def test_a_train_tar_member_with_a_newline_is_listed_and_the_conversion_finishes(archives, tmp_path):
    archives, inner = archives
    inner = dict(inner)
    inner["n01440764"] = _tar([("a.JPEG", _jpeg(photo(30, 40, 1))), ("evil\nname.JPEG", _jpeg(photo(30, 40, 2)))])
    (archives / "ILSVRC2012_img_train.tar").write_bytes(_tar([(f"{w}.tar", d) for w, d in inner.items()]))
    report = convert(archives, tmp_path / "db", opts(splits=("train",), layout="archives"))
    assert report.ok and len(LmdbImageNet(tmp_path / "db", "train")) == 5
    assert any("newline" in reason for _, reason in report.splits[0].ignored)


def test_an_archive_cut_short_or_with_two_members_of_one_name_is_an_error_naming_it(archives, tmp_path):
    archives, inner = archives
    full = (archives / "ILSVRC2012_img_train.tar").read_bytes()
    second = full.find(b"n01443537.tar")  # the second member's header: cut inside it
    (archives / "ILSVRC2012_img_train.tar").write_bytes(full[:second + 100])
    with pytest.raises(LayoutError, match="cut short or damaged after member 'n01440764.tar'"):
        convert(archives, tmp_path / "a", opts(splits=("train",), layout="archives"))
    data = _tar([("n01440764.tar", inner["n01443537"]), ("n01440764.tar", inner["n01440764"])])
    (archives / "ILSVRC2012_img_train.tar").write_bytes(data)
    with pytest.raises(LayoutError, match="two members are named 'n01440764.tar'"):
        convert(archives, tmp_path / "b", opts(splits=("train",), layout="archives"))
    with tarfile.open(fileobj=io.BytesIO(full)) as tar:
        last = tar.getmembers()[-1]
    (archives / "ILSVRC2012_img_train.tar").write_bytes(full[:last.offset_data + 100])  # inside a member's data
    with pytest.raises(LayoutError, match="n01484850.tar' is cut short"):
        convert(archives, tmp_path / "c", opts(splits=("train",), layout="archives"))


def test_a_damaged_devkit_is_one_line(archives, tmp_path):
    archives, _ = archives
    devkit = archives / "ILSVRC2012_devkit_t12.tar.gz"
    devkit.write_bytes(devkit.read_bytes()[:200])
    result = cli("convert", archives, tmp_path / "db", "--no-progress")
    assert result.returncode == 1 and "devkit" in result.stderr and result.stderr.count("\n") == 1, result.stderr


# ------------------------------------------------------------------ records and metadata that would lie


def _rewrite(db: Path, key: int, change) -> None:
    env = lmdb.open(str(db / "train"), max_dbs=3)
    with env.begin(write=True, db=env.open_db(RECORDS_DB)) as txn:
        fields = msgpack.unpackb(txn.get(encode_key(key)), raw=False)
        txn.put(encode_key(key), msgpack.packb(change(fields), use_bin_type=True))
    env.close()


@pytest.mark.parametrize("field, value", [("height", 40), ("height", 0), ("height", 250), ("width", 63),
                                          ("target", 1), ("target", float("inf")), ("size", 10)])
def test_every_field_of_a_stored_record_is_checked(db, field, value):
    ds = LmdbImageNet(db, "train")
    _rewrite(db, 3, lambda f: {**f, field: value})
    with pytest.raises(CorruptRecordError, match="record 3"):
        LmdbImageNet(db, "train", decoder="tensor")[3]
    assert not verify(db).ok and len(ds) == 24


def test_metadata_with_inf_or_wrong_types_is_a_format_error_even_with_a_recomputed_checksum(db):
    from helpers import put_meta

    from imagenet_pack.contract.format import CHECKSUMS_KEY, META_KEY
    env = lmdb.open(str(db / "val"), max_dbs=3, readonly=True, lock=False)
    with env.begin(db=env.open_db(b"meta", create=False)) as txn:
        meta = msgpack.unpackb(txn.get(META_KEY), raw=False)
        checksums = msgpack.unpackb(txn.get(CHECKSUMS_KEY), raw=False)
    env.close()
    for bad in ({**meta, "count": float("inf")}, {**meta, "count": "12"}, {**meta, "wnids": None}):
        value = msgpack.packb(bad, use_bin_type=True)
        put_meta(db / "val", META_KEY, value)
        put_meta(db / "val", CHECKSUMS_KEY, msgpack.packb({**checksums, "meta": __import__("zlib").crc32(value)}))
        with pytest.raises(FormatError, match="metadata field missing or malformed"):
            LmdbImageNet(db, "val")
        assert cli("verify", db).returncode == 1


def test_a_stray_shard_folder_name_is_left_alone(db):
    (db / "train" / "shard-000-of-002.bak").mkdir()
    (db / "val" / "notes").mkdir()
    assert len(LmdbImageNet(db, "train")) == 24
    for args in (("info", db), ("verify", db)):
        result = cli(*args)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def test_a_finished_shard_whose_sources_changed_is_converted_again_and_named(tree, tmp_path, monkeypatch):
    """A resumed multi-shard run (some shards finished, one not) with a file of a finished shard edited
    meanwhile: that shard is converted again, the file named, and the database equals its sources."""
    from imagenet_pack.write.writer import ShardWriter
    dst = tmp_path / "db"
    real = ShardWriter.finish
    calls = []

    def stop_after_one(self, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ShardWriter, "finish", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        convert(tree, dst, opts(shards=2, splits=("train",)))
    monkeypatch.undo()
    first = sorted((tree / "train").rglob("*.JPEG"))[0]  # in shard 0, which finished
    write_jpeg(first, photo(48, 64, 99))
    report = convert(tree, dst, opts(shards=2, splits=("train",)))
    assert report.ok
    note = [w for w in report.splits[0].warnings if "changed since this shard was finished" in w]
    assert len(note) == 1 and first.name in note[0]
    assert verify(dst, source=tree).ok


def test_overwrite_with_only_shards_over_another_shard_count_says_what_to_do(tree, tmp_path):
    convert(tree, tmp_path / "db", opts(shards=3))
    with pytest.raises(OutputExistsError, match="--shards 3, not 2;.*give its --shards, or --overwrite without"):
        convert(tree, tmp_path / "db", opts(shards=2, only_shards=(0,), overwrite=True))


def test_a_full_disk_is_said_in_words_and_the_rerun_resumes(tree, tmp_path, monkeypatch):
    """LMDB reports a full disk as an I/O error from its commit: the message says "disk full", and the rerun
    resumes from the last commit that made it."""
    from imagenet_pack.write import writer
    commits = []

    class Full:  # the environment, but its third commit fails as a full disk makes it fail
        def __init__(self, env):
            self.env = env

        def __getattr__(self, name):
            return getattr(self.env, name)

        def begin(self, write=False, **kw):
            txn = self.env.begin(write=write, **kw)
            if write and len(commits) >= 2:
                txn.abort()
                raise lmdb.Error("mdb_txn_commit: Input/output error")
            commits.append(write)
            return txn

    real_init = writer.ShardWriter.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.env = Full(self.env)

    monkeypatch.setattr(writer.ShardWriter, "__init__", init)
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(ImagenetPackError, match="disk full .*rerun the same command to resume"):
        convert(tree, tmp_path / "db", opts(batch_bytes=4000, splits=("train",)))
    monkeypatch.undo()
    assert convert(tree, tmp_path / "db", opts(batch_bytes=4000, splits=("train",))).ok


# root without capabilities: permission bits then bind it as they bind any user (a folder of mode 000 cannot be
# read, another user's 755 folder cannot be written), and it still reaches the package wherever the checkout
# lives (an unprivileged user cannot, under a private folder)
UNPRIVILEGED = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]


def _can_drop_privileges() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    return subprocess.run([*UNPRIVILEGED, sys.executable, "-c", "import imagenet_pack"]).returncode == 0


@pytest.mark.skipif(not _can_drop_privileges(), reason="needs root and setpriv to run the converter without privileges")
def test_unreadable_folders_and_an_unwritable_dst_are_one_line_errors(tmp_path):
    src = small_tree(tmp_path / "src")
    convert_cmd = [*UNPRIVILEGED, sys.executable, "-m", "imagenet_pack.cli", "convert"]
    (tmp_path / "ro").mkdir(mode=0o755)
    os.chown(tmp_path / "ro", 65534, 65534)  # another user's folder
    unwritable = subprocess.run([*convert_cmd, str(src), str(tmp_path / "ro" / "db"), "--no-progress"],
                                capture_output=True, text=True, timeout=120)
    folder = next((src / "train").iterdir())
    os.chmod(folder, 0o000)
    try:
        unreadable = subprocess.run([*convert_cmd, str(src), str(tmp_path / "out"), "--no-progress"],
                                    capture_output=True, text=True, timeout=120)
    finally:
        os.chmod(folder, 0o755)
    for result, words in ((unwritable, "ro"), (unreadable, "cannot read this folder")):
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr


def test_a_stray_image_beside_val_class_folders_is_listed_not_a_layout_change(tree, tmp_path):
    write_jpeg(tree / "val" / "stray.JPEG", photo(20, 20, 5))
    report = convert(tree, tmp_path / "db", opts())
    assert report.ok
    assert dict(report.splits[1].ignored)["val/stray.JPEG"] == "a file beside the class folders, not in one"
