"""The command line, through main(argv) and as a real subprocess."""
from __future__ import annotations

import subprocess
import sys

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
