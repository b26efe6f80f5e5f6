"""A database that changes under its readers: copied over in place, rewritten, replaced, removed, or being
converted right now. Every way of reading an open dataset says so in one line (never a signal, never old
metadata paired with new records), and a reader of a database a conversion is writing is told that one is
running, not to start one."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import opts, small_tree

from imagenet_pack import FormatError, LmdbImageNet, convert
from imagenet_pack.synthetic import make_sample_tree

READ_EVERY_WAY = textwrap.dedent(r"""
    import sys, torch
    from imagenet_pack import ImagenetPackError, LmdbImageNet, RandomResizedCropDecoder, build_loader
    opened = [LmdbImageNet(root, "train", decoder=RandomResizedCropDecoder(16, seed=1)) for root in sys.argv[1:]]
    for ds in opened:
        ds[0]; ds.targets; ds.paths
    print("opened", flush=True)
    sys.stdin.readline()  # the test changes the databases now
    for k, ds in enumerate(opened):
        ways = {"item": lambda: ds[len(ds) - 1], "targets": lambda: ds.targets, "sizes": lambda: ds.sizes,
                "paths": lambda: ds.paths, "record": lambda: ds.read_record(1),
                "device batch": lambda: next(build_loader(ds, 2, workers=1, gpu_share=1.0, device="cpu").batches()),
                "loader": lambda: next(iter(build_loader(ds, 2, workers=1))),
                "pickled": lambda: __import__("pickle").loads(__import__("pickle").dumps(ds))[1]}
        for name, way in ways.items():
            try:
                way()
                print(k, name, "READ", sep="|", flush=True)
            except ImagenetPackError as exc:
                print(k, name, f"error, {str(exc).count(chr(10))} newlines: {exc}", sep="|", flush=True)
""")

pytestmark = pytest.mark.slow  # readers and conversions as real processes


def _copy_smaller_over(db: Path, tmp: Path) -> None:
    small = small_tree(tmp / "small", classes=2, per_class=2, seed=5)
    convert(small, tmp / "smalldb", opts(splits=("train",)))
    shutil.copyfile(tmp / "smalldb" / "train" / "data.mdb", db / "train" / "data.mdb")  # in place, as cp does


def _rewrite_in_place(db: Path, tmp: Path) -> None:
    data = (db / "train" / "data.mdb").read_bytes()
    with open(db / "train" / "data.mdb", "r+b") as out:  # the same bytes, written again: the same size
        out.write(data)


def _replace_by_rename(db: Path, tmp: Path) -> None:
    other = small_tree(tmp / "other", classes=4, per_class=6, seed=9)
    convert(other, tmp / "otherdb", opts(splits=("train",)))
    os.replace(tmp / "otherdb" / "train" / "data.mdb", db / "train" / "data.mdb")


def _overwrite(db: Path, tmp: Path) -> None:
    other = small_tree(tmp / "other", classes=4, per_class=6, seed=9)  # same names, other images
    convert(other, db, opts(splits=("train",), overwrite=True))


def _remove(db: Path, tmp: Path) -> None:
    os.unlink(db / "train" / "data.mdb")


CHANGES = {"copied over, smaller": _copy_smaller_over, "rewritten in place": _rewrite_in_place,
           "replaced by rename": _replace_by_rename, "convert --overwrite": _overwrite, "removed": _remove}


def test_an_open_dataset_whose_database_changed_says_so_every_way_it_is_read(tree, tmp_path):
    """One reader process holds a dataset open on each of five databases; each database is then changed its
    own way: every way of reading each says so in one line."""
    dbs = {change: tmp_path / f"db{k}" for k, change in enumerate(CHANGES)}
    for db in dbs.values():
        convert(tree, db, opts(splits=("train",)))
    reader = subprocess.Popen([sys.executable, "-c", READ_EVERY_WAY, *map(str, dbs.values())],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "opened"
    time.sleep(0.01)  # a modification time of its own, even on coarse clocks
    for k, (change, db) in enumerate(dbs.items()):
        CHANGES[change](db, tmp_path / f"work{k}")
    out, err = reader.communicate("go\n", timeout=300)
    assert reader.returncode == 0, err[-2000:]  # no signal, nothing but the package's errors
    said: dict[str, dict[str, str]] = {change: {} for change in dbs}
    for line in out.splitlines():
        k, way, text = line.split("|", 2)
        said[list(dbs)[int(k)]][way] = text
    for change, lines in said.items():
        assert set(lines) == {"item", "targets", "sizes", "paths", "record", "device batch", "loader", "pickled"}
        for way, text in lines.items():
            assert text.startswith("error, 0 newlines: "), (change, way, text)
            assert "changed since it was opened" in text, (change, way, text)


def _start_conversion(src: Path, dst: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imagenet_pack.cli", "convert", str(src), str(dst), "--workers",
                             "1", "--no-progress", "--commit-mb", "1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop_when(process: subprocess.Popen, ready) -> None:
    """Stop ``process`` (SIGSTOP) as soon as ``ready()``; it must still be converting then."""
    deadline = time.monotonic() + 60
    while not ready():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGSTOP)
    assert process.poll() is None, "the conversion finished before it could be stopped: give it more images"


def test_readers_of_a_database_being_converted_are_told_a_conversion_is_running(tmp_path):
    src = make_sample_tree(tmp_path / "src", classes=4, train_per_class=40, val_per_class=1)
    dst = tmp_path / "db"
    writer = _start_conversion(src, dst, "--splits", "train")
    try:
        _stop_when(writer, lambda: (dst / "train" / "data.mdb").is_file() and
                   (dst / "train" / "data.mdb").stat().st_size > 1 << 16)
        with pytest.raises(FormatError, match=rf"`imagenet-pack convert` \(pid {writer.pid}\) is writing it now"):
            LmdbImageNet(dst, "train")
    finally:
        os.kill(writer.pid, signal.SIGCONT)
    assert writer.wait(timeout=120) == 0
    assert len(LmdbImageNet(dst, "train")) == 160


def test_an_overwrite_running_under_an_open_dataset_is_never_served_half_written(tmp_path):
    first = make_sample_tree(tmp_path / "a", classes=4, train_per_class=40, val_per_class=1, seed=1)
    second = make_sample_tree(tmp_path / "b", classes=4, train_per_class=40, val_per_class=1, seed=2)  # same names
    dst = tmp_path / "db"
    convert(first, dst, opts(splits=("train",)))
    old = LmdbImageNet(dst, "train")
    old[0]
    inode = (dst / "train" / "data.mdb").stat().st_ino
    writer = _start_conversion(second, dst, "--splits", "train", "--overwrite")
    try:
        _stop_when(writer, lambda: (dst / "train" / "data.mdb").exists() and
                   (dst / "train" / "data.mdb").stat().st_ino != inode)
        with pytest.raises(FormatError, match="changed since it was opened.*is writing it now"):
            old[1]
        with pytest.raises(FormatError, match=rf"`imagenet-pack convert` \(pid {writer.pid}\) is writing it now"):
            LmdbImageNet(dst, "train")
    finally:
        os.kill(writer.pid, signal.SIGCONT)
    assert writer.wait(timeout=120) == 0
    with pytest.raises(FormatError, match="changed since it was opened"):
        old[1]
    new = LmdbImageNet(dst, "train")
    assert len(new) == 160 and new.read_record(0).image == (second / new.paths[0]).read_bytes()


def test_a_same_size_copy_over_the_database_with_its_mtime_restored_is_seen(tmp_path):
    """Another database of the same size copied over this one in place (same inode, same size, the old
    mtime restored): the open dataset says the database changed, never serves the other's images."""
    from imagenet_pack import ConvertOptions, FormatError, convert
    from imagenet_pack.synthetic import make_sample_tree
    for name, seed in (("a", 1), ("b", 2)):
        make_sample_tree(tmp_path / name, classes=3, train_per_class=6, val_per_class=1, size=(48, 64), seed=seed)
        convert(tmp_path / name, tmp_path / f"db{name}", ConvertOptions(workers=1, progress=False, splits=("train",)))
    mine, other = tmp_path / "dba" / "train" / "data.mdb", tmp_path / "dbb" / "train" / "data.mdb"
    assert mine.stat().st_size == other.stat().st_size
    ds = LmdbImageNet(tmp_path / "dba", "train", decoder="tensor")
    first = ds.read_record(0).image
    st = mine.stat()
    with open(mine, "r+b") as out:  # in place: the inode stays
        out.write(other.read_bytes())
    os.utime(mine, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (mine.stat().st_ino, mine.stat().st_size, mine.stat().st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    with pytest.raises(FormatError, match="changed since it was opened"):
        assert ds.read_record(0).image == first
