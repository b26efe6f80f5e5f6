"""What a process holds and for how long: descriptors that end with their datasets, look-ahead threads that end
before the interpreter, a root resolved once, a share given now that wins over a resumed one."""
from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import opts

from imagenet_pack import LmdbImageNet, RandomResizedCropDecoder, build_loader, convert


def deleted_descriptors(under: Path) -> list[str]:
    """Targets of this process's descriptors on deleted files under ``under``."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "(deleted)" in target and target.startswith(str(under)):
            out.append(target)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_descriptors_end_with_the_datasets_that_use_them(tree, tmp_path):
    """Databases opened, read, dropped and deleted leave no descriptor on a deleted file (their disk space is
    freed); a dataset still alive keeps reading; two datasets of one database share its readers until both
    are gone."""
    kept = None
    for k in range(6):
        db = tmp_path / f"db{k}"
        convert(tree, db, opts(splits=("train",), shards=2))
        first, second = LmdbImageNet(db, "train", decoder="tensor"), LmdbImageNet(db, "train", decoder="tensor")
        first[0], second[len(second) - 1]
        del first
        gc.collect()
        second[1]  # the other user of the same readers still reads
        if k == 0:
            kept = second
        del second
        gc.collect()
        if k:
            shutil.rmtree(db)
    assert deleted_descriptors(tmp_path) == []
    assert kept[2][1] == kept.targets[2]


@pytest.mark.slow
def test_a_conversion_of_many_shards_and_its_reading_fit_a_low_descriptor_limit(tree, tmp_path):
    """convert --shards 60 under ulimit -n 48 works (writers are opened a few at a time); reading all 60
    shards there is refused in one line that names the descriptor limit, or works."""
    script = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
        from imagenet_pack import ConvertOptions, ImagenetPackError, LmdbImageNet, convert
        report = convert(sys.argv[1], sys.argv[2], ConvertOptions(splits=("train",), shards=60, workers=1,
                                                                  progress=False))
        print("converted", report.ok, flush=True)
        try:
            ds = LmdbImageNet(sys.argv[2], "train", decoder="tensor")
            [ds[i] for i in range(len(ds))]
            print("read")
        except ImagenetPackError as exc:
            print("refused:", exc)
        """)
    result = subprocess.run([sys.executable, "-c", script, str(tree), str(tmp_path / "db")], capture_output=True,
                            text=True, timeout=300)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and lines[0] == "converted True", result.stdout + result.stderr[-2000:]
    assert lines[1] == "read" or ("ulimit -n" in lines[1] and "48 open file descriptors" in lines[1])
    assert len(LmdbImageNet(tmp_path / "db", "train")) == 24


@pytest.mark.slow
@pytest.mark.parametrize("feed", ["hybrid, every row on the device", "CudaPrefetcher over the CPU loader",
                                  "plain CPU loader"])
def test_a_live_look_ahead_at_module_level_ends_the_process_cleanly(db_session, tmp_path, feed):
    """A script that keeps a started look-ahead in a global (a notebook, any module-level iterator) exits 0
    when it ends, never by a signal: every thread the package started is stopped and joined first."""
    script = tmp_path / "peek.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        from imagenet_pack import LmdbImageNet, RandomResizedCropDecoder, build_loader, CudaPrefetcher
        ds = LmdbImageNet(sys.argv[1], "train", decoder=RandomResizedCropDecoder(16))
        feed = {feed!r}
        share = 1.0 if feed.startswith("hybrid") else 0.0
        loader = build_loader(ds, 4, train=True, workers=2, seed=0, device="cpu", gpu_share=share)
        source = CudaPrefetcher(loader, "cpu") if feed.startswith("Cuda") else loader
        batches = iter(source)
        images, targets = next(batches)
        print("first batch", tuple(images.shape), flush=True)
        """))
    result = subprocess.run([sys.executable, str(script), str(db_session)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "first batch (4, 3, 16, 16)" in result.stdout and "terminate called" not in result.stderr


def test_a_relative_root_still_reads_after_the_process_changes_directory(db_session, tmp_path, monkeypatch):
    """Opened as a relative path, a dataset reads the same database after chdir (as Hydra and many scripts do),
    in the main process and in a loader's workers."""
    monkeypatch.chdir(db_session.parent)
    ds = LmdbImageNet(db_session.name, "train", decoder=RandomResizedCropDecoder(16, seed=1))
    first = ds[0]
    monkeypatch.chdir(tmp_path)
    assert ds[0][1] == first[1] and ds.root == db_session
    images, _ = next(iter(build_loader(ds, 4, workers=1, device="cpu")))
    assert images.shape == (4, 3, 16, 16)


def test_a_share_given_now_wins_over_the_resumed_one_and_is_said(db_session):
    """A loader built with gpu_share=1.0 and resumed from a gpu_share=0.25 state decodes every row on the device
    from the resumed position on, and a warning says so; resumed with the same share, nothing is said; an
    'auto' loader keeps the saved decisions."""
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=1))
    old = build_loader(ds, 4, workers=1, gpu_share=0.25, device="cpu")
    next(iter(old))
    state = old.state_dict()
    new = build_loader(ds, 4, workers=1, gpu_share=1.0, device="cpu")
    with pytest.warns(UserWarning, match=r"gpu_share 1.0 given now replaces the resumed run's 0.25 from epoch 0, "
                                         r"sample 4 on"):
        new.load_state_dict(state)
    assert new.gpu_share == 1.0 and new.policy.share_at(0, 0) == 0.25 and new.policy.share_at(0, 4) == 1.0
    same = build_loader(ds, 4, workers=1, gpu_share=0.25, device="cpu")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(state)
    auto = build_loader(ds, 4, workers=1, gpu_share="auto", device="cpu")
    auto.load_state_dict(state)
    assert auto.gpu_share == 0.25
    images, _ = next(iter(new))
    assert images.shape == (4, 3, 16, 16)


def test_shared_memory_is_sized_by_the_batch_and_running_out_is_one_line(db_session, monkeypatch):
    """The hybrid's room per staged row is the one the pinned buffers use (not half a megabyte); a /dev/shm too
    small for what the loader asks is one line naming /dev/shm and the size, not a torch traceback."""
    from imagenet_pack import ImagenetPackError
    from imagenet_pack.loader import ring
    from imagenet_pack.read.staged import BYTES_PER_ROW
    assert BYTES_PER_ROW <= 256 << 10
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(16, seed=1))
    real = os.statvfs

    class Tiny:
        f_bavail, f_frsize = 1, 4096  # 4 KiB free

    monkeypatch.setattr(ring.os, "statvfs", lambda path: Tiny() if path == ring.SHM else real(path))
    for share in (0.0, 1.0):
        with pytest.raises(ImagenetPackError) as refused:
            build_loader(ds, 8, workers=1, gpu_share=share, device="cpu")
        said = str(refused.value)
        assert "\n" not in said and said.startswith("/dev/shm: the loader asks for") and "MiB" in said
