"""The command line, through main(argv) and as a real subprocess."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from imagenet_pack import LmdbImageNet
from imagenet_pack.cli import main


def test_convert_info_verify_through_main(tree, tmp_path, capsys):
    dst = tmp_path / "db"
    assert main(["convert", str(tree), str(dst), "--workers", "2", "--no-progress", "--splits", "val"]) == 0
    out = capsys.readouterr().out
    assert "val" in out and "report:" in out
    assert not (dst / "train").exists()
    assert len(LmdbImageNet(dst, "val")) == 12
    assert main(["info", str(dst)]) == 0
    assert "val: 12 records, 4 classes, 1 shard(s)" in capsys.readouterr().out
    assert main(["verify", str(dst), "--decode", "--source", str(tree)]) == 0
    assert "ok: 12 records checked" in capsys.readouterr().out


def test_refusals_are_one_line_errors(tree, tmp_path, capsys):
    dst = tmp_path / "db"
    assert main(["convert", str(tree), str(dst), "--no-progress", "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["convert", str(tree), str(dst), "--no-progress"]) == 1  # the same command again: nothing to do
    err = capsys.readouterr().err
    assert "already holds a complete database" in err and "nothing to do" in err and err.count("\n") == 1
    assert main(["convert", str(tree), str(dst), "--no-progress", "--max-side", "32"]) == 1  # other options
    err = capsys.readouterr().err
    assert err.startswith("imagenet-pack: error:") and "--overwrite" in err and err.count("\n") == 1
    assert main(["info", str(tmp_path / "missing")]) == 1
    assert "no such database directory" in capsys.readouterr().err


def test_subprocess_bad_input_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "imagenet_pack.cli", "convert", str(tmp_path / "nope"),
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "does not exist" in result.stderr


def test_subprocess_convert_and_read(tree, tmp_path):
    dst = tmp_path / "db"
    result = subprocess.run([sys.executable, "-m", "imagenet_pack.cli", "convert", str(tree), str(dst),
                             "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(LmdbImageNet(dst, "train")) == 24


def test_bench_measures_train_and_val_against_their_own_baselines(tree_session, db_session, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", str(db_session), "--images", str(tree_session), "--epochs", "1", "--workers", "1",
                 "--batch-size", "4", "--json", str(out), "--device", "cpu", "--arch", "resnet18",
                 "--feed-batch-size", "4", "--feed-steps", "1"]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["results"]}
    assert {"train-baseline", "val-baseline", "train-lmdb-dropin", "train-lmdb-fused", "val-lmdb-fused"} <= set(rows)
    for name, row in rows.items():
        base = rows[f"{row['kind']}-baseline"]["images_per_s"]
        assert row["images_per_s"] > 0 and row["ratio_to_baseline"] == pytest.approx(row["images_per_s"] / base)
        assert name.split("-")[0] == row["kind"]
    assert rows["val-lmdb-fused"]["kind"] == "val"  # val entries are divided by the val baseline
    first = report["time_to_first_batch"]
    assert 0 < first["lmdb_fused_train_s"] < 120 and 0 < first["imagefolder_train_s"] < 120
    assert "val-baseline" in table and "time to first batch from process start" in table
    feeds = {row["feed"]: row for row in report["training_feed"]}  # the GPU table's code, on the CPU device
    assert set(feeds) == {"CPU fused decode", "GPU decode mode", "hybrid, auto share",
                          "synthetic on device (compute bound)"}
    assert all(row["images_per_s"] > 0 and 0 <= row["data_wait"] <= 1 for row in feeds.values())
    assert feeds["GPU decode mode"]["gpu_share"] == 1.0 and "training feed, resnet18" in table
    assert main(["bench", str(db_session), "--images", str(tmp_path / "nope")]) == 1
    assert "no such folder (--images)" in capsys.readouterr().err
