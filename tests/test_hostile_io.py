"""What the converter, the benchmark and the loaders read and write, tried as an attacker or an unlucky
operator would: side files that inflate without bound, a disk that fills mid-write, names that outgrow the
filesystem, a FIFO or a folder loop in the benchmark's tree, nesting deeper than Python's stack, a worker
killed by the OOM killer, folders someone else can change, states that were never written by us."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
from helpers import cli, opts

from imagenet_pack import EpochSampler, LayoutError, LmdbImageNet, convert
from imagenet_pack.bench.folders import SourceFolder, image_sources
from imagenet_pack.contract.layout import check_names, report_path
from imagenet_pack.sources.devkit import load_devkit
from imagenet_pack.sources.kaggle import kaggle_splits
from imagenet_pack.write.ownership import write_file

# ------------------------------------------------------------------ side files: every read bounded

def _devkit(path: Path, members: dict[str, bytes | int]) -> Path:
    """A devkit .tar.gz whose members are bytes, or N zero bytes (a gzip bomb: tiny archive, huge member)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/{name}")
            info.size = data if isinstance(data, int) else len(data)
            tar.addfile(info, io.BytesIO(bytes(data) if isinstance(data, int) else data))
    return path


@pytest.mark.parametrize("members, said", [
    ({"data/meta.mat": 300 << 20}, "data/meta.mat is 314572800 bytes, over the 16 MiB"),
    ({"data/ILSVRC2012_validation_ground_truth.txt": 64 << 20, "data/meta.mat": b"x"}, "over the 4 MiB"),
    ({"evaluation/padding.bin": 200 << 20, "data/meta.mat": b"x"}, "inflates to more than 128 MiB"),
])
def test_a_devkit_that_inflates_without_bound_is_refused_in_one_line(tmp_path, members, said):
    path = _devkit(tmp_path / "ILSVRC2012_devkit_t12.tar.gz", members)
    assert path.stat().st_size < 1 << 20  # a small download ...
    started = time.perf_counter()
    with pytest.raises(LayoutError, match=said):  # ... that never inflates past the bound
        load_devkit(path)
    assert time.perf_counter() - started < 10


def test_extracted_devkit_and_kaggle_side_files_are_read_within_bounds(tmp_path):
    folder = tmp_path / "devkit" / "data"
    folder.mkdir(parents=True)
    with open(folder / "meta.mat", "wb") as out:  # a sparse file: 4 GiB claimed, nothing on disk
        out.truncate(4 << 30)
    with pytest.raises(LayoutError, match="meta.mat: over the 16 MiB"):
        load_devkit(tmp_path / "devkit")
    os.unlink(folder / "meta.mat")
    os.mkfifo(folder / "meta.mat")  # a FIFO: never opened for a blocking read
    with pytest.raises(LayoutError, match="must be a regular file"):
        load_devkit(tmp_path / "devkit")
    kaggle = tmp_path / "kaggle"
    (kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "val").mkdir(parents=True)
    with open(kaggle / "LOC_synset_mapping.txt", "wb") as out:
        out.truncate(4 << 30)
    with pytest.raises(LayoutError, match="LOC_synset_mapping.txt: over the 1 MiB"):
        kaggle_splits(kaggle)
    os.unlink(kaggle / "LOC_synset_mapping.txt")
    with open(kaggle / "LOC_val_solution.csv", "wb") as out:
        out.truncate(4 << 30)
    with pytest.raises(LayoutError, match="LOC_val_solution.csv: over the 64 MiB"):
        kaggle_splits(kaggle)["val"]()


# ------------------------------------------------------------------ writes: whole or an error

def test_a_short_write_is_continued_until_every_byte_is_written(tmp_path, monkeypatch):
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:1000])))  # a nearly full disk's way
    data = os.urandom(78750)
    write_file(tmp_path / "report.jsonl", data)
    assert (tmp_path / "report.jsonl").read_bytes() == data


FULL_DISK = textwrap.dedent("""
    import os, resource, signal, sys
    from pathlib import Path
    from imagenet_pack.cli import main
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write is cut short, then fails (EFBIG)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow  # seconds: whole conversions, many files
def test_a_report_that_does_not_fit_fails_the_command_never_cut(tree, tmp_path):
    """A file size limit stands in for a full disk (no root needed): the report is cut mid-write."""
    folder = next((tree / "train").iterdir())
    for k in range(300):  # a long report: 300 ignored files
        (folder / f"readme_{k:04d}_with_a_long_descriptive_name.txt").write_text("x")
    assert cli("convert", tree, tmp_path / "db", "--workers", "1", "--no-progress").returncode == 0
    report = tmp_path / "db" / "convert-report.jsonl"
    whole = report.read_bytes()
    assert len(whole) > 20000
    report.unlink()  # the rerun over the complete database writes only the report again
    result = subprocess.run([sys.executable, "-c", FULL_DISK, "8192", "convert", str(tree), str(tmp_path / "db"),
                             "--workers", "1", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "convert-report.jsonl: cannot write it" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert not report.exists() and not list((tmp_path / "db").glob(".convert-report*"))  # never a cut report
    assert cli("convert", tree, tmp_path / "db", "--workers", "1", "--no-progress").returncode == 0
    assert report.read_bytes() == whole


# ------------------------------------------------------------------ names: bounded, said before work starts

def test_report_names_fit_any_set_of_shards(tmp_path):
    assert report_path(tmp_path, (0, 1)).name == "convert-report.shards-0-1.jsonl"
    assert report_path(tmp_path, (2, 3)).name == "convert-report.shards-2-3.jsonl"
    assert report_path(tmp_path, tuple(range(128))).name == "convert-report.shards-0-127.jsonl"
    assert report_path(tmp_path, (0, 2, 5, 6, 7, 9)).name == "convert-report.shards-0_2_5-7_9.jsonl"
    every_other = report_path(tmp_path, tuple(range(0, 999, 2)))
    assert len(every_other.name) <= 200 and "500-shards" in every_other.name
    assert every_other != report_path(tmp_path, tuple(range(1, 999, 2)))
    check_names(tmp_path, ("train", "val"), 999, tuple(range(0, 999, 2)))


def test_a_conversion_whose_names_cannot_fit_is_refused_before_any_work(tree, tmp_path):
    deep = tmp_path
    while len(str(deep)) < 4000:
        deep = deep / ("d" * 200)
    result = cli("convert", tree, deep, "--no-progress")
    assert result.returncode == 1 and "over this system's limit" in result.stderr, result.stderr
    assert not (tmp_path / ("d" * 200)).exists()  # nothing was created
    result = cli("convert", tree, tmp_path / "db", "--shards", "1000", "--no-progress")
    assert result.returncode == 2 and "at most 999 shards" in result.stderr and "Traceback" not in result.stderr


def test_many_shards_written_by_one_host_finish_with_their_report(tree, tmp_path):
    result = cli("convert", tree, tmp_path / "db", "--splits", "train", "--shards", "512", "--only-shards",
                 ",".join(map(str, range(128))), "--workers", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "db" / "convert-report.shards-0-127.jsonl").is_file()


# ------------------------------------------------------------------ the benchmark reads what the converter reads

def test_the_benchmark_baseline_never_opens_a_fifo_nor_follows_a_folder_loop(tree, tmp_path):
    folder = next((tree / "train").iterdir())
    os.mkfifo(folder / "zz_fifo.JPEG")
    (folder / "loop").symlink_to(folder)
    started = time.perf_counter()
    baseline = SourceFolder(image_sources(tree)["train"])
    assert time.perf_counter() - started < 10
    reasons = dict(baseline.ignored)
    assert "FIFO" in reasons[f"train/{folder.name}/zz_fifo.JPEG"] and "loops" in reasons[f"train/{folder.name}/loop"]
    ds = LmdbImageNet(_converted(tree, tmp_path), "train")
    assert [p for p, _ in baseline.samples] == ds.paths
    assert baseline.targets == ds.targets.tolist() and baseline.classes == ds.wnids
    image, target = baseline[0]
    assert image.size == tuple(int(v) for v in ds.sizes[0][::-1]) and target == ds.targets[0]


def _converted(tree: Path, tmp_path: Path) -> Path:
    convert(tree, tmp_path / "db", opts(splits=("train",)))
    return tmp_path / "db"


# ------------------------------------------------------------------ no traceback: nesting, dead workers

@pytest.mark.slow  # seconds: whole conversions, many files
def test_a_class_folder_nested_deeper_than_pythons_stack_is_read(tree, tmp_path):
    folder = next((tree / "train").iterdir())
    deep = folder
    for _ in range(1200):  # level by level: pathlib's and os's own makedirs recurse
        deep = deep / "a"
        deep.mkdir()
    (deep / "deep.JPEG").write_bytes(next(folder.glob("*.JPEG")).read_bytes())
    try:
        result = cli("convert", tree, tmp_path / "db", "--splits", "train", "--workers", "1", "--no-progress")
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert any(p.endswith("/deep.JPEG") for p in LmdbImageNet(tmp_path / "db", "train").paths)
    finally:  # shutil.rmtree recurses too
        (deep / "deep.JPEG").unlink()
        while deep != folder:
            deep.rmdir()
            deep = deep.parent


KILLED_WORKER = textwrap.dedent("""
    import os, signal, sys
    import imagenet_pack.write.tasks as tasks
    from imagenet_pack.cli import main
    real = tasks.prepare
    def prepare(data, options):  # the OOM killer picks the worker reading this file
        if len(data) == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(data, options)
    tasks.prepare = prepare
    sys.exit(main(sys.argv[2:]))
""")


def test_a_worker_killed_like_the_oom_killer_would_is_one_line_and_resumable(tree, tmp_path):
    victim = sorted((tree / "train").rglob("*.JPEG"))[10]
    victim.write_bytes(victim.read_bytes() + b"\0" * 7)  # a size no other file has
    args = ["convert", str(tree), str(tmp_path / "db"), "--workers", "2", "--no-progress", "--commit-mb", "1"]
    result = subprocess.run([sys.executable, "-c", KILLED_WORKER, str(victim.stat().st_size), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = result.stderr.strip()
    assert line.count("\n") == 0 and "killed by signal 9 (SIGKILL)" in line, line
    assert victim.relative_to(tree).as_posix() in line and "rerun the same command to resume" in line
    assert cli(*args).returncode == 0  # the rerun finishes
    assert len(LmdbImageNet(tmp_path / "db", "train")) == 24


# ------------------------------------------------------------------ folders someone else can change

def test_a_split_folder_other_users_can_write_in_is_refused(tree, tmp_path):
    (tmp_path / "db" / "train").mkdir(parents=True)
    os.chmod(tmp_path / "db" / "train", 0o777)
    result = cli("convert", tree, tmp_path / "db", "--no-progress", "--workers", "1")
    assert result.returncode == 1 and "other users can write in it (mode 777)" in result.stderr, result.stderr
    assert not (tmp_path / "db" / "train" / "data.mdb").exists()


@pytest.mark.slow  # seconds: whole conversions, many files
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_a_split_folder_of_another_user_is_refused_and_nothing_of_theirs_is_written(tree, tmp_path):
    target = tmp_path / "roots_file"
    target.write_bytes(b"precious")
    split = tmp_path / "db" / "train"
    split.mkdir(parents=True)
    (split / "lock.mdb").symlink_to(target)
    os.lchown(split / "lock.mdb", 54321, 54321)
    os.chown(split, 54321, 54321)  # a user who owns DST/train, and could flip links there at any moment
    for _ in range(3):
        result = cli("convert", tree, tmp_path / "db", "--no-progress", "--workers", "1")
        assert result.returncode == 1 and "belongs to user 54321" in result.stderr, result.stderr
    assert target.read_bytes() == b"precious"


def test_lmdb_writes_in_the_folder_that_was_checked(tree, tmp_path, monkeypatch):
    """LMDB is handed the checked folder itself, open: a folder swapped in under the same name afterwards
    receives nothing."""
    import imagenet_pack.write.writer as writer
    seen = []
    real = writer.lmdb.open
    monkeypatch.setattr(writer.lmdb, "open", lambda path, **kw: seen.append(path) or real(path, **kw))
    convert(tree, tmp_path / "db", opts(splits=("train",)))
    assert seen and all(p.startswith("/proc/self/fd/") for p in seen)


# ------------------------------------------------------------------ states we did not write

@pytest.mark.parametrize("field, value", [("consumed", -10), ("consumed", 10.5), ("consumed", 101), ("epoch", -1),
                                          ("epoch", 1.0), ("epoch", True), ("consumed", "5"), ("seed", -3),
                                          ("shuffle", "yes"), ("world_size", 0), ("consumed", None)])
def test_a_sampler_state_with_a_bad_field_is_refused_in_one_line(field, value):
    sampler = EpochSampler(100, seed=0, rank=0, world_size=1)
    state = {**sampler.state_dict(0), field: value}
    with pytest.raises((ValueError, TypeError)) as error:
        sampler.load_state_dict(state)
    assert "\n" not in str(error.value) and field in str(error.value)
    assert sampler.epoch == 0 and len(sampler) == 100  # nothing of it was taken


@pytest.mark.parametrize("state", [[], {"epoch": 0}, "x"])
def test_something_else_than_a_sampler_state_is_refused(state):
    with pytest.raises((ValueError, TypeError)):
        EpochSampler(100, seed=0, rank=0, world_size=1).load_state_dict(state)
