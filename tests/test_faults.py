"""Faults and operator mistakes: never delete what we did not write, resume from a kill at any commit, no crash
on any input, damaged databases detected, one writer per output."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import msgpack
import numpy as np
import pytest
from helpers import opts, put_meta, records

from imagenet_pack import BusyError, FormatError, ImagenetPackError, LmdbImageNet, OutputExistsError, convert, verify
from imagenet_pack.cli import main
from imagenet_pack.contract.format import META_KEY
from imagenet_pack.contract.shardfiles import close_shard as close_handle


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_overwrite_refuses_overlapping_src_and_dst_and_keeps_every_source_file(tree, capsys):
    before = files_of(tree)
    for dst in (tree, tree / "train", tree.parent):
        assert main(["convert", str(tree), str(dst), "--overwrite", "--no-progress", "--workers", "1"]) == 1
        err = capsys.readouterr().err
        assert "overlap" in err and err.count("\n") == 1
    os.symlink(tree, tree.parent / "link")  # the same folder under another name
    with pytest.raises(ImagenetPackError, match="overlap"):
        convert(tree, tree.parent / "link", opts(overwrite=True))
    assert files_of(tree) == before


def test_overwrite_removes_only_what_imagenet_pack_wrote(tree, tmp_path):
    dst = tmp_path / "db"
    mine = dst / "train" / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("someone's work")
    for overwrite in (True, False):  # neither replaced nor written into
        with pytest.raises(OutputExistsError, match=r"did not write \(.*mine\).*move them away"):
            convert(tree, dst, opts(overwrite=overwrite))
    assert (mine / "notes.txt").read_text() == "someone's work"
    (mine / "notes.txt").unlink()
    mine.rmdir()
    convert(tree, dst, opts(shards=2))
    (dst / "train" / "shard-000-of-002" / "extra.bin").write_bytes(b"x")  # a stray file inside one of our shards
    with pytest.raises(OutputExistsError, match="extra.bin"):
        convert(tree, dst, opts(overwrite=True))
    (dst / "train" / "shard-000-of-002" / "extra.bin").unlink()
    convert(tree, dst, opts(overwrite=True))  # now every file is ours: replaced by a one-shard database
    assert sorted(p.name for p in (dst / "train").iterdir()) == ["data.mdb", "lock.mdb"]


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from imagenet_pack import ConvertOptions, convert
    from imagenet_pack.write import converter, writer
    limit, seen = int(sys.argv[3]), [0]
    def killing(original):
        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            seen[0] += 1
            if seen[0] == limit:
                os.kill(os.getpid(), signal.SIGKILL)  # right after the commit (or the report) is on disk
            return result
        return wrapped
    writer.ShardWriter._write = killing(writer.ShardWriter._write)
    converter.write_report = killing(converter.write_report)
    convert(sys.argv[1], sys.argv[2], ConvertOptions(workers=1, shards=3, progress=False, batch_bytes=4000))
""")


@pytest.mark.slow
def test_a_kill_after_every_commit_resumes_to_the_uninterrupted_database(tree, tmp_path):
    reference = tmp_path / "reference"
    convert(tree, reference, opts(shards=3, batch_bytes=4000))
    dst = tmp_path / "killed"
    kills = 0
    for _ in range(200):  # each run is killed right after its first commit, so every commit is a kill point
        run = subprocess.run([sys.executable, "-c", _KILLER, str(tree), str(dst), "1"],
                             capture_output=True, text=True, timeout=120)
        if run.returncode != -9:  # finished (or a no-op over what a killed run had finished)
            assert run.returncode == 0, run.stderr[-2000:]
            break
        kills += 1
    assert kills > 12  # every record batch, every shard's final commit, the report: all were kill points
    for split in ("train", "val"):
        assert records(dst, split) == records(reference, split)
    again = convert(tree, dst, opts(shards=3, batch_bytes=4000))  # a resumed job rerun once more: a no-op
    assert again.noop and all(r.already_complete for r in again.splits)


def _bmp_claiming(width: int, height: int) -> bytes:
    header = bytearray(cv2.imencode(".bmp", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    header[18:26] = np.array([width, height], "<i4").tobytes()
    return bytes(header)


def test_hostile_and_odd_files_are_skipped_with_reasons_never_a_crash(tree, tmp_path):
    folder = next((tree / "train").iterdir())
    (folder / "bomb.JPEG").write_bytes(_bmp_claiming(60000, 60000))  # a BMP named .JPEG, 3.6 Gpx claimed
    (folder / "short.JPEG").write_bytes(_bmp_claiming(64, 64))  # header fine, pixel data missing
    (folder / "noise.JPEG").write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 " + os.urandom(40))
    (folder / "gif.JPEG").write_bytes(b"GIF89a")  # a signature and nothing after it
    report = convert(tree, tmp_path / "db", opts(workers=2, skip_bad=True))
    skipped = dict(report.splits[0].skipped)
    assert skipped[f"train/{folder.name}/gif.JPEG"] == "truncated or corrupt GIF header (the file is 6 bytes)"
    assert "over the 134217728 pixel limit" in skipped[f"train/{folder.name}/bomb.JPEG"]
    assert f"train/{folder.name}/short.JPEG" in skipped and f"train/{folder.name}/noise.JPEG" in skipped
    assert len(LmdbImageNet(tmp_path / "db", "train")) == 24  # every good image stored


def test_skipped_files_are_retried_after_a_fix_and_reasons_survive_in_the_metadata(tree, tmp_path):
    folder = next((tree / "train").iterdir())
    bad = folder / "a_bad.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    first = convert(tree, tmp_path / "db", opts())
    assert not first.ok and [p for p, _ in first.splits[0].skipped] == [f"train/{folder.name}/a_bad.JPEG"]
    bad.write_bytes(cv2.imencode(".jpg", np.full((20, 30, 3), 90, np.uint8))[1].tobytes())  # fixed in place
    fixed = convert(tree, tmp_path / "db", opts())
    assert fixed.ok and not fixed.splits[0].skipped and len(LmdbImageNet(tmp_path / "db", "train")) == 25
    bad.write_bytes(b"broken again")
    convert(tree, tmp_path / "db2", opts(skip_bad=True, splits=("train",)))
    both = convert(tree, tmp_path / "db2", opts(skip_bad=True))  # train kept as it is, val converted
    assert both.splits[0].already_complete and not both.splits[1].already_complete
    assert "not an image" in dict(both.splits[0].skipped)[f"train/{folder.name}/a_bad.JPEG"]  # from the metadata
    report = (tmp_path / "db2" / "convert-report.jsonl").read_text()
    assert "a_bad.JPEG" in report and "not an image" in report


def test_names_that_are_not_utf8_are_stored_losslessly_and_newlines_are_reported(tree, tmp_path):
    folder = next((tree / "train").iterdir())
    raw = os.fsencode(folder) + b"/caf\xe9.JPEG"  # Latin-1 bytes: not UTF-8
    os.rename(next(folder.glob("*.JPEG")), raw)
    (folder / "two\nlines.JPEG").write_bytes(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    result = subprocess.run([sys.executable, "-m", "imagenet_pack.cli", "convert", str(tree), str(tmp_path / "db"),
                             "--no-progress", "--workers", "1"], capture_output=True, text=True)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    paths = LmdbImageNet(tmp_path / "db", "train").paths
    stored = [p for p in paths if p.endswith(".JPEG") and "caf" in p]
    assert len(stored) == 1 and os.fsencode(stored[0]).endswith(b"caf\xe9.JPEG")
    assert open(os.path.join(os.fsencode(tree), os.fsencode(stored[0])), "rb").read()  # names the real file
    report = (tmp_path / "db" / "convert-report.jsonl").read_text()
    assert "newline" in report and "ignored" in report


def test_truncated_database_is_a_package_error_not_a_signal(db):
    data = db / "train" / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    close_handle(db / "train")
    with pytest.raises(FormatError, match="truncated"):
        LmdbImageNet(db, "train")
    script = f"from imagenet_pack.cli import main; raise SystemExit(main(['verify', {str(db)!r}]))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "truncated" in result.stdout and "Traceback" not in result.stderr


def test_damaged_metadata_fails_its_checksum(db):
    env_dir = db / "val"
    ds = LmdbImageNet(db, "val")
    import lmdb
    env = lmdb.open(str(env_dir), max_dbs=3)
    with env.begin(db=env.open_db(b"meta")) as txn:
        meta = msgpack.unpackb(txn.get(META_KEY), raw=False)
    env.close()
    meta["wnids"][0] = meta["wnids"][0][:-1] + "X"  # a well-formed but wrong class list
    put_meta(env_dir, META_KEY, msgpack.packb(meta, use_bin_type=True))
    close_handle(env_dir)
    with pytest.raises(FormatError, match="fail their checksum"):
        LmdbImageNet(db, "val")
    assert len(ds) == 12  # opened before the damage: its metadata was checked then


@pytest.mark.parametrize("key", [b"stamps", b"paths"])
def test_verify_checks_the_paths_and_stamps_a_reader_never_needs(db, key):
    """The source paths and stamps are read only by --source checks and reruns: verify checks them always."""
    import lmdb
    env = lmdb.open(str(db / "val"), max_dbs=3, readonly=True, lock=False)
    with env.begin(db=env.open_db(b"meta", create=False)) as txn:
        value = bytearray(txn.get(key))
    env.close()
    value[3] ^= 0x01
    put_meta(db / "val", key, bytes(value))
    assert len(LmdbImageNet(db, "val")) == 12  # a reader opens it: nothing it needs is damaged
    problems = verify(db).problems
    assert len(problems) == 1 and f"its {key.decode()} fail their checksum" in problems[0], problems


def test_a_second_writer_is_refused_at_once_naming_the_holder(tree, tmp_path):
    dst = tmp_path / "db"
    dst.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from imagenet_pack.write.lock import hold_lock
        with hold_lock(Path({str(dst)!r})):
            print("locked", flush=True)
            sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BusyError, match=rf"another imagenet-pack convert \(pid {holder.pid}\) is running"):
            convert(tree, dst, opts())
        result = subprocess.run([sys.executable, "-m", "imagenet_pack.cli", "convert", str(tree), str(dst)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and "another imagenet-pack convert" in result.stderr
        assert "--overwrite" not in result.stderr and "Traceback" not in result.stderr
    finally:
        holder.kill()  # the kernel releases the lock of a killed holder: no stale lock
        holder.wait()
    assert convert(tree, dst, opts()).ok


def test_one_database_opened_under_two_spellings(db, monkeypatch):
    monkeypatch.chdir(db.parent)
    relative, absolute = LmdbImageNet(db.name, "val"), LmdbImageNet(db.resolve(), "val")
    assert relative.read_record(3) == absolute.read_record(3)


def test_what_is_passed_over_is_listed_as_ignored(tree, tmp_path):
    (tree / "train" / "README.txt").write_text("loose file beside the class folders")
    report = convert(tree, tmp_path / "db", opts(splits=("train",)))
    assert dict(report.splits[0].ignored)["train/README.txt"] == "a file beside the class folders, not in one"
    import io
    import tarfile

    from imagenet_pack.sources.archives import members
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = b"\xff\xd8 jpeg bytes"
        info = tarfile.TarInfo("a.JPEG")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name, kind in (("link.JPEG", tarfile.SYMTYPE), ("hard.JPEG", tarfile.LNKTYPE), ("dev", tarfile.CHRTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "a.JPEG"
            tar.addfile(info)
    buffer.seek(0)
    ignored: list = []
    path = tmp_path / "test.tar"
    path.write_bytes(buffer.getvalue())
    with tarfile.open(path, mode="r:") as tar:
        found = members(tar, path, "test.tar", 0, path.stat().st_size, ignored)
    assert [m[0] for m in found] == ["a.JPEG"]
    assert dict(ignored) == {"link.JPEG": "a symbolic link in the archive, not a regular file",
                             "hard.JPEG": "a hard link in the archive, not a regular file",
                             "dev": "a device or special file in the archive, not a regular file"}


def test_the_lock_survives_every_close_and_ask_of_the_file_and_ends_with_its_holder(tree, tmp_path):
    """Held by this process: asking who holds it (as a resumed conversion's reader does), opening and closing
    the lock file, and a forked child that exits never drop it (a second writer in another process is still
    refused); other shards of the same DST stay free; released, the next writer gets it at once."""
    from imagenet_pack.contract import shardlock
    from imagenet_pack.read.reader import list_splits
    from imagenet_pack.write.lock import hold_lock
    dst = tmp_path / "db"
    dst.mkdir()
    probe = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from imagenet_pack import BusyError
        from imagenet_pack.write.lock import hold_lock
        try:
            with hold_lock(Path({str(dst)!r}), tuple(int(s) for s in sys.argv[1:])):
                print("taken")
        except BusyError as exc:
            print("busy:", exc)
        """)

    def other(*shards):
        return subprocess.run([sys.executable, "-c", probe, *map(str, shards)], capture_output=True, text=True,
                              timeout=60).stdout.strip()

    with hold_lock(dst, (0, 2)):
        assert shardlock.holder(dst, 0) == os.getpid() and shardlock.holder(dst, 1) is None
        os.close(os.open(shardlock.lock_path(dst), os.O_RDONLY))
        list_splits(dst)
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
        assert other(0).startswith(f"busy: {dst}: another imagenet-pack convert (pid {os.getpid()})")
        assert other(2).startswith("busy:") and other(1, 3) == "taken"
    assert shardlock.holder(dst, 0) is None and other(0, 2) == "taken"


def test_a_verdict_is_kept_only_for_the_same_bytes_and_the_environment_is_always_retried(tree, tmp_path,
                                                                                           monkeypatch):
    """A file found damaged, then restored from a backup with its size and mtime (cp -p), is read again and
    stored; the same damaged bytes stay refused; a read failure of the machine (EIO) or running out of memory
    is reported as such and tried again by the next run, not remembered as damage."""
    import errno

    from imagenet_pack.write import tasks
    folder = next((tree / "train").iterdir())
    good = sorted(folder.iterdir())[0]
    backup, st = good.read_bytes(), good.stat()
    rotted = bytearray(backup)
    for k in range(12):
        at = len(rotted) // 2 + k * 97
        if rotted[at] != 0xFF and rotted[at - 1] != 0xFF:
            rotted[at] ^= 0x5A
    good.write_bytes(bytes(rotted))
    os.utime(good, ns=(st.st_atime_ns, st.st_mtime_ns))
    first = convert(tree, tmp_path / "db", opts(splits=("train",)))
    assert not first.ok and first.splits[0].skipped[0][0].endswith(good.name)
    again = convert(tree, tmp_path / "db", opts(splits=("train",)))  # the same bytes: the same verdict
    assert not again.ok and "tried again" not in again.splits[0].skipped[0][1]
    good.write_bytes(backup)
    os.utime(good, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (good.stat().st_size, good.stat().st_mtime_ns) == (len(rotted), st.st_mtime_ns)
    restored = convert(tree, tmp_path / "db", opts(splits=("train",)))
    assert restored.ok and len(LmdbImageNet(tmp_path / "db", "train")) == 24

    real_read, real_prepare = tasks.read_item, tasks.prepare
    for failure, said in ((OSError(errno.EIO, "Input/output error"), "cannot read: Input/output error"),
                          (MemoryError(), "out of memory while decoding")):
        dst = tmp_path / f"env-{said[:6]}"

        def failing_read(item, limit, _failure=failure):
            if item.path.endswith(good.name) and isinstance(_failure, OSError):
                raise _failure
            return real_read(item, limit)

        def failing_prepare(data, options, _failure=failure):
            if data == backup and isinstance(_failure, MemoryError):
                raise _failure
            return real_prepare(data, options)

        monkeypatch.setattr(tasks, "read_item", failing_read)
        monkeypatch.setattr(tasks, "prepare", failing_prepare)
        failed = convert(tree, dst, opts(splits=("train",)))
        reason = dict(failed.splits[0].skipped)[f"train/{folder.name}/{good.name}"]
        assert reason.startswith(said) and reason.endswith("(tried again by a rerun)")
        monkeypatch.setattr(tasks, "read_item", real_read)
        monkeypatch.setattr(tasks, "prepare", real_prepare)
        assert convert(tree, dst, opts(splits=("train",))).ok  # nothing about the file changed: retried anyway


def test_overwrite_deletes_only_through_the_folders_it_checked(tree, tmp_path, monkeypatch):
    """--overwrite in a DST other users can write is refused before anything is deleted; and a split folder
    swapped for a link to another database between the proof and the deletion costs that database nothing."""
    import stat as stat_module

    from imagenet_pack import UnsafeOutputError
    from imagenet_pack.write import ownership
    dst, other = tmp_path / "db", tmp_path / "other"
    convert(tree, dst, opts(splits=("train",)))
    convert(tree, other, opts(splits=("train",)))
    before = files_of(other)
    dst.chmod(dst.stat().st_mode | stat_module.S_IWGRP)
    with pytest.raises(UnsafeOutputError, match="other users can write in it"):
        convert(tree, dst, opts(splits=("train",), overwrite=True, max_side=32))
    assert (dst / "train" / "data.mdb").is_file()
    dst.chmod(dst.stat().st_mode & ~stat_module.S_IWGRP)
    real = ownership.owned_files

    def then_swapped(split_dir):
        found = real(split_dir)
        (split_dir).rename(split_dir.with_name("moved"))
        split_dir.symlink_to(other / "train")
        return found

    monkeypatch.setattr(ownership, "owned_files", then_swapped)
    with pytest.raises(UnsafeOutputError, match="without following a link"):
        ownership.remove_database(dst / "train")
    assert files_of(other) == before
