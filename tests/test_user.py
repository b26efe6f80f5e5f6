"""What a new user meets: a bad file costs that file, the tables read true at a glance, a no-op needs no
write, progress that means what it says."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from helpers import cli, opts

from imagenet_pack import LmdbImageNet, convert
from imagenet_pack.bench.report import rate_cells
from imagenet_pack.meter import ProgressMeter


def _break(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3] + b"\xff\xd9")  # cut short: libjpeg says so


def test_bad_files_cost_themselves_only(tree, tmp_path):
    files = sorted((tree / "train").rglob("*.JPEG"))
    for bad in (files[1], files[20]):
        _break(bad)
    db = tmp_path / "db"
    first = cli("convert", tree, db, "--workers", "1", "--no-progress", "--commit-mb", "1")
    assert first.returncode == 1 and "2 image(s) could not be stored" in first.stderr
    assert sum(line.startswith("  skipped ") for line in first.stdout.splitlines()) == 2  # every one listed
    size = (db / "train" / "data.mdb").stat().st_size
    info = cli("info", db)  # its advice, run as written, finishes the database
    assert info.returncode == 1 and "adding --skip-bad if it stopped on files it could not store" in info.stdout
    finish = cli("convert", tree, db, "--workers", "1", "--no-progress", "--skip-bad")
    assert finish.returncode == 0, finish.stderr
    train_row = next(line for line in finish.stdout.splitlines() if line.startswith("train "))
    assert train_row.split()[6] == "0"  # "this run": nothing read again, the bad files stay skipped
    assert (db / "train" / "data.mdb").stat().st_size <= size + (64 << 10)  # the final commit's metadata only
    assert len(LmdbImageNet(db, "train")) == 22


def test_a_fixed_bad_file_is_read_again_from_where_it_sits(tree, tmp_path):
    files = sorted((tree / "train").rglob("*.JPEG"))
    good = files[20].read_bytes()
    _break(files[20])
    db = tmp_path / "db"
    assert not convert(tree, db, opts(splits=("train",))).ok
    files[20].write_bytes(good)
    again = convert(tree, db, opts(splits=("train",)))
    assert again.ok and again.splits[0].converted == 4  # the fixed file and the three after it
    assert len(LmdbImageNet(db, "train")) == 24


def test_a_no_op_over_a_complete_database_writes_and_locks_nothing(tree, tmp_path):
    db = tmp_path / "db"
    assert convert(tree, db, opts()).ok
    for lock in db.glob(".imagenet-pack.*.lock"):
        lock.unlink()
    before = {p: p.stat().st_mtime_ns for p in db.rglob("*")}
    os.chmod(db, 0o555)  # read-only (root is not stopped by it: nothing created below proves it all the same)
    try:
        result = cli("convert", tree, db, "--workers", "1", "--no-progress")
    finally:
        os.chmod(db, 0o755)
    assert result.returncode == 0 and "nothing to do" in result.stdout, result.stderr
    assert {p: p.stat().st_mtime_ns for p in db.rglob("*")} == before  # no lock, no report, nothing touched


def test_the_ratio_column_can_be_checked_against_the_rates_it_stands_beside():
    baseline = {"rounds_images_per_s": [627.0, 300.0, 700.0], "images_per_s": 627.0}
    entry = {"rounds_images_per_s": [375.0, 290.0, 690.0], "images_per_s": 375.0}
    rates, ratio = rate_cells(entry, baseline)
    assert rates == "375 290 690 -> 375"  # every round is shown beside its median ...
    assert ratio == "0.97 (0.60 0.97 0.99)"  # ... and so is every round's ratio beside theirs


def test_progress_after_a_resume_counts_this_runs_work_and_a_zero_column_terminal_gets_lines(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr("shutil.get_terminal_size", lambda *a: os.terminal_size((0, 24)))
    meter = ProgressMeter(1000, "convert train", "img", initial=900, interval=0.0)
    assert meter.bar is None  # a bar in 0 columns would be nothing at all
    monkeypatch.setattr("imagenet_pack.meter.time.perf_counter", lambda: 110.0)
    meter.started = meter.last = 100.0
    meter.update(50)
    line = capsys.readouterr().err
    assert "950/1000 img (95%)" in line and ", 5 img/s" in line  # 50 this run in 10 s, not 950


@pytest.mark.parametrize("verb", ["info", "verify", "demo", "convert", "bench"])
def test_every_verb_says_what_it_does_in_its_help(verb):
    result = cli(verb, "--help")
    assert result.returncode == 0
    description = result.stdout.split("\n\n")[1]
    assert len(description) > 60 and not description.startswith(("positional", "options")), result.stdout


@pytest.mark.slow  # seconds: whole conversions, many files
def test_the_advice_of_verify_and_a_damaged_read_repairs_the_database_when_run_as_written(tree, tmp_path):
    """A record of shard 1 of 2 bit-rotted: reading it and ``verify`` both advise rerunning the convert command
    with --repair; run as written, it converts shard 1 again (shard 0's file untouched) and the database then
    verifies, equal to a clean conversion; with no damage, --repair changes nothing."""
    from helpers import flip_payload_byte, records
    db = tmp_path / "db"
    command = ["convert", tree, db, "--shards", "2", "--splits", "train", "--workers", "1", "--no-progress"]
    assert cli(*command).returncode == 0
    ds = LmdbImageNet(db, "train")
    shard1 = db / "train" / "shard-001-of-002"
    victim = len(ds) - 1
    flip_payload_byte(shard1, tree / "train" / ds.paths[victim].split("/", 1)[1])
    with pytest.raises(Exception, match="rerun the convert command that made it with --repair") as error:
        LmdbImageNet(db, "train")[victim]
    assert "\n" not in str(error.value)
    verified = cli("verify", db, "--no-progress")
    assert verified.returncode == 1 and "rerun the convert command that made it with --repair" in verified.stderr
    kept = (db / "train" / "shard-000-of-002" / "data.mdb").stat()
    repaired = cli(*command, "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert f"{shard1}: damaged; converting it again" in repaired.stdout
    assert (db / "train" / "shard-000-of-002" / "data.mdb").stat().st_ino == kept.st_ino
    assert cli("verify", db, "--no-progress").returncode == 0
    convert(tree, tmp_path / "clean", opts(shards=2, splits=("train",)))
    assert records(db) == records(tmp_path / "clean")
    again = cli(*command, "--repair")
    assert again.returncode == 0 and "no damage found" in again.stdout and "nothing to do" in again.stdout
    both = cli(*command, "--repair", "--overwrite")
    assert both.returncode == 2 and "choose one" in both.stderr
