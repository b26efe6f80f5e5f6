"""Past one host and one allocation: per-record arrays read in place (nothing per record pickled or copied),
conversion split across hosts with --only-shards."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import opts, records
from torch.utils.data import DataLoader

from imagenet_pack import ConvertOptions, FormatError, LmdbImageNet, RandomResizedCropDecoder, convert
from imagenet_pack.cli import main


def test_a_pickled_dataset_carries_no_per_record_array(db_session, tmp_path, tree):
    small = LmdbImageNet(db_session, "train")
    size_small = len(pickle.dumps(small))
    big_tree = tmp_path / "big"
    for folder in sorted((tree / "train").iterdir()):  # 10x the records, same classes
        for k in range(60):
            target = big_tree / "train" / folder.name
            target.mkdir(parents=True, exist_ok=True)
            os.link(next(folder.iterdir()), target / f"{k}.JPEG")
    convert(big_tree, tmp_path / "bigdb", opts())
    big = LmdbImageNet(tmp_path / "bigdb", "train")
    assert len(big) == 240 and len(small) == 24
    assert abs(len(pickle.dumps(big)) - size_small) < 200  # independent of the record count
    clone = pickle.loads(pickle.dumps(big))
    assert clone.targets.tolist() == big.targets.tolist() and clone.sizes.tolist() == big.sizes.tolist()
    # the narrowest types, read-only; read on first access by the process that asks, never carried along
    assert big.targets.dtype == np.dtype("<i2") and not big.targets.flags.writeable
    assert big.sizes.dtype == np.dtype("<u2") and big.sizes.shape == (240, 2)
    assert len(pickle.dumps(big)) - len(pickle.dumps(LmdbImageNet(tmp_path / "bigdb", "train"))) == 0


@pytest.mark.slow
@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_workers_read_targets_under_every_start_method(db_session, context):
    ds = LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(8, seed=1))
    expected = ds.targets.tolist()
    loader = DataLoader(ds, batch_size=6, num_workers=2, multiprocessing_context=context)
    assert torch.cat([t for _, t in loader]).tolist() == expected


def test_two_hosts_with_only_shards_equal_one_host(tree, tmp_path, capsys):
    convert(tree, tmp_path / "one", opts(shards=4))
    script = ("from imagenet_pack.cli import main; import sys; "
              "raise SystemExit(main(sys.argv[1:]))")
    first = subprocess.run([sys.executable, "-c", script, "convert", str(tree), str(tmp_path / "two"), "--shards", "4",
                            "--only-shards", "0,1", "--no-progress", "--workers", "1"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    with pytest.raises(FormatError, match=r"shard\(s\) 2, 3 of 4 are missing or unfinished.*--only-shards 2,3"):
        LmdbImageNet(tmp_path / "two", "train")
    assert main(["verify", str(tmp_path / "two")]) == 1  # the finished shards are checked, the rest named
    out = capsys.readouterr()
    assert "2, 3 of 4 are missing" in out.out and "records checked" not in out.out
    assert main(["info", str(tmp_path / "two")]) == 1
    assert "shard-000-of-004: finished" in capsys.readouterr().out
    second = subprocess.run([sys.executable, "-c", script, "convert", str(tree), str(tmp_path / "two"), "--shards", "4",
                             "--only-shards", "2,3", "--no-progress", "--workers", "1"], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    for split in ("train", "val"):
        assert records(tmp_path / "two", split) == records(tmp_path / "one", split)
    assert main(["verify", str(tmp_path / "two")]) == 0
    assert sorted(p.name for p in (tmp_path / "two").glob("convert-report*")) == [
        "convert-report.shards-0-1.jsonl", "convert-report.shards-2-3.jsonl"]
    # a one-host rerun of the whole command finds every shard done
    again = convert(tree, tmp_path / "two", opts(shards=4))
    assert all(r.already_complete for r in again.splits)


def test_only_shards_must_name_existing_shards(tree, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["convert", str(tree), str(tmp_path / "db"), "--shards", "2", "--only-shards", "2"])
    assert "shards are numbered 0..1" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"shards are numbered 0\.\.1 with --shards 2"):
        ConvertOptions(shards=2, only_shards=(5,))
