"""The command line, through main(argv) and as a real process: what a new user meets."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import cli, flip_payload_byte

from imagenet_pack import FormatError, ImagenetPackError, LmdbImageNet, __version__
from imagenet_pack.bench import report as bench_report
from imagenet_pack.cli import main
from imagenet_pack.synthetic import make_sample_tree


def test_convert_info_verify_through_main(tree, tmp_path, capsys):
    dst = tmp_path / "db"
    assert main(["convert", str(tree), str(dst), "--workers", "2", "--no-progress", "--splits", "val"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{tree}: folders layout"  # what was found, before any work
    assert "val" in out and "report:" in out
    assert not (dst / "train").exists()
    assert len(LmdbImageNet(dst, "val")) == 12
    assert main(["info", str(dst)]) == 0
    assert "val: 12 records of 4 of the database's 4 classes, 1 shard(s)" in capsys.readouterr().out
    assert main(["verify", str(dst), "--decode", "--source", str(tree), "--no-progress"]) == 0
    assert "ok: 12 records checked" in capsys.readouterr().out


def test_reruns_behave_one_way(tree, tmp_path, capsys):
    """The same command over its own complete database is a no-op that says so and exits 0; other options are
    refused with one line; neither touches the database."""
    dst = tmp_path / "db"
    assert main(["convert", str(tree), str(dst), "--no-progress", "--workers", "1"]) == 0
    capsys.readouterr()
    stamp = [(p, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(dst.rglob("data.mdb"))]
    assert main(["convert", str(tree), str(dst), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "already complete for this input and these options; nothing to do" in out
    assert " - " in out.splitlines()[-3] or "-" in out  # no rate for what this run did not convert
    assert main(["convert", str(tree), str(dst), "--no-progress", "--max-side", "32"]) == 1  # other options
    err = capsys.readouterr().err
    assert err.startswith("imagenet-pack: error:") and "--overwrite" in err and err.count("\n") == 1
    assert stamp == [(p, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(dst.rglob("data.mdb"))]
    assert main(["info", str(tmp_path / "missing")]) == 1
    assert "no such database directory" in capsys.readouterr().err


def test_one_class_list_for_every_split_even_when_val_holds_fewer_classes(tmp_path, capsys):
    """val with images of 2 of train's 5 classes: the same wnids and targets in both splits (ImageFolder on
    val alone would number its 2 classes 0 and 1), and info says how many classes each split holds."""
    src = make_sample_tree(tmp_path / "src", classes=5, train_per_class=2, val_per_class=1, size=(32, 32))
    for folder in sorted((src / "val").iterdir())[:3]:
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    assert main(["convert", str(src), str(tmp_path / "db"), "--no-progress", "--workers", "1"]) == 0
    assert "images of 2 of the database's 5 classes" in capsys.readouterr().out
    train, val = LmdbImageNet(tmp_path / "db", "train"), LmdbImageNet(tmp_path / "db", "val")
    assert train.wnids == val.wnids and len(val.wnids) == 5
    for i in range(len(val)):
        assert val.wnids[int(val.targets[i])] == val.paths[i].split("/")[1]  # a target means the same class
    assert main(["info", str(tmp_path / "db")]) == 0
    out = capsys.readouterr().out
    assert "train: 10 records of 5 of the database's 5 classes" in out and "val: 2 records of 2 of" in out


def test_what_a_new_user_types_wrong_gets_one_line(tree, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for dst in (afile, afile / "db"):  # DST an existing file, or below one
        assert main(["convert", str(tree), str(dst), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("imagenet-pack: error:") and err.count("\n") == 1, err
    assert main(["convert", str(tree), str(tmp_path / "db"), "--no-progress", "--workers", "1"]) == 0
    capsys.readouterr()
    said = ("this is one split of a database, not the database; pass the folder that holds its splits: "
            f"{tmp_path / 'db'}")
    for verb in ("info", "verify"):  # a split folder where a database is wanted: one message everywhere
        assert main([verb, str(tmp_path / "db" / "train")]) == 1
        out = capsys.readouterr()
        assert said in out.err + out.out, (verb, out)
    with pytest.raises(FormatError, match="this is one split of a database"):
        LmdbImageNet(tmp_path / "db" / "train", "train")
    with pytest.raises(SystemExit) as exit_:
        main(["convert", str(tree), str(tmp_path / "x"), "--max-sid", "3"])  # no abbreviations: a typo is an error
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage: imagenet-pack convert" in err and "unrecognized arguments: --max-sid" in err
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"imagenet-pack {__version__}"
    with pytest.raises(SystemExit):
        main(["info", "--help"])
    assert "the database directory" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "classes to generate" in capsys.readouterr().out


def test_a_closed_pipe_ends_info_quietly(db_session):
    result = subprocess.run(f"{sys.executable} -m imagenet_pack.cli info {db_session} | head -1", shell=True,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("train:") and "Traceback" not in result.stderr and not result.stderr


def _group_alive(pgid: int) -> list[str]:
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory):
    """A conversion of several seconds on 2 cores (so the interrupts below land in it): 300 generated images a
    class, each stored four times under different names (cheaper to make than 1,200 distinct images)."""
    root = make_sample_tree(tmp_path_factory.mktemp("big") / "src", classes=4, train_per_class=300, val_per_class=2,
                            size=(240, 320))
    for image in sorted((root / "train").rglob("*.JPEG")):
        data = image.read_bytes()
        for k in range(3):
            image.with_name(f"{image.stem}_copy{k}.JPEG").write_bytes(data)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.2, 0.5, 0.9])
def test_ctrl_c_during_convert_stops_quietly_every_time(big_tree, tmp_path, delay):
    """One Ctrl-C (SIGINT to the whole process group, as a terminal sends it) at several moments: one line,
    exit 130, no traceback, no process left; the rerun resumes."""
    dst = tmp_path / "db"
    proc = subprocess.Popen([sys.executable, "-m", "imagenet_pack.cli", "convert", str(big_tree), str(dst),
                             "--workers", "2", "--commit-mb", "1", "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    if proc.returncode == 0 or (proc.returncode == -signal.SIGINT and "report:" in stdout and not stderr):
        # finished first (a Ctrl-C during the interpreter's own clean-up after the last line ends it by SIGINT)
        pytest.skip("the conversion finished before the interrupt")
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stdout + stderr
    assert stderr.strip() == "imagenet-pack: interrupted; rerun the same command to resume"
    time.sleep(0.3)
    assert not _group_alive(proc.pid)
    assert cli("convert", big_tree, dst, "--workers", "2", "--no-progress").returncode == 0


@pytest.mark.slow
def test_workers_die_with_a_killed_converter(big_tree, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "imagenet_pack.cli", "convert", str(big_tree), str(tmp_path / "db"),
                             "--workers", "2", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    time.sleep(0.7)
    proc.kill()  # the parent only
    proc.communicate(timeout=30)
    deadline = time.time() + 10
    while _group_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _group_alive(proc.pid), "converter workers outlived their parent"


def test_verify_with_workers_reports_what_one_worker_reports(tree_session, db, capsys):
    flip_payload_byte(db / "train", sorted((tree_session / "train").rglob("*.JPEG"))[5])
    one = cli("verify", db, "--decode", "--source", tree_session)
    four = cli("verify", db, "--decode", "--source", tree_session, "--workers", "4")
    assert one.returncode == four.returncode == 1
    assert one.stdout == four.stdout and "checksum mismatch" in one.stdout
    assert "verify:" in four.stderr and "records" in four.stderr  # progress off a terminal too


@pytest.mark.slow
def test_bench_measures_train_and_val_against_their_own_baselines(tree_session, db_session, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", str(db_session), "--images", str(tree_session), "--rounds", "1", "--limit", "8",
                 "--workers", "1", "--batch-size", "4", "--json", str(out), "--device", "cpu", "--feed-arch",
                 "resnet18", "--feed-batch-size", "4", "--feed-steps", "1", "--plot", str(tmp_path / "b.png")]) == 0
    captured = capsys.readouterr()
    table, progress = captured.out, captured.err
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["results"]}
    assert {"train-baseline", "val-baseline", "train-lmdb-dropin", "train-lmdb-fused", "val-lmdb-fused"} <= set(rows)
    for name, row in rows.items():
        base = rows[f"{row['kind']}-baseline"]["rounds_images_per_s"][0]  # one round: its ratio is the figure
        assert row["images_per_s"] > 0 and row["ratio_to_baseline"] == pytest.approx(row["images_per_s"] / base)
        assert name.split("-")[0] == row["kind"] and len(row["rounds_images_per_s"]) == 1
    assert report["images_per_round"] == 8 and report["machine"]["cpu"]
    assert "train-baseline: round 1/1" in progress  # per-entry progress
    first = report["time_to_first_batch"]
    assert 0 < first["lmdb_fused_train_s"] < 120 and 0 < first["imagefolder_train_s"] < 120
    assert "val-baseline" in table and "time to first batch from process start" in table
    entry_lines = [line for line in table.splitlines() if line.split(" ")[0] in rows or line.startswith("entry ")]
    assert len(entry_lines) == len(rows) + 1 and len({len(line) for line in entry_lines}) == 1  # columns aligned
    feeds = {row["feed"]: row for row in report["training_feed"]}  # the GPU table's code, on the CPU device
    assert set(feeds) == {"CPU fused decode", "GPU decode mode", "hybrid, auto share",
                          "synthetic on device (compute bound)"}
    assert all(row["images_per_s"] > 0 and 0 <= row["data_wait"] <= 1 for row in feeds.values())
    assert feeds["GPU decode mode"]["gpu_share"] == 1.0 and "training feed, resnet18" in table
    assert (tmp_path / "b.png").stat().st_size > 0
    figure = bench_report.chart(report)
    title = figure.axes[0].get_title()
    assert all(word in title for word in ("cores", "workers", "batch 4", "8 images", report["date"]))
    assert sum("images/s" in t.get_text() for t in figure.axes[0].texts) == len([r for r in rows.values()])
    assert main(["bench", str(db_session), "--images", str(tmp_path / "nope")]) == 1
    assert "no such folder (--images)" in capsys.readouterr().err


@pytest.mark.slow
def test_a_first_batch_process_that_never_ends_is_killed_and_named(tmp_path, monkeypatch):
    from imagenet_pack import ImagenetPackError
    from imagenet_pack.bench import loaders
    monkeypatch.setattr(loaders, "FIRST_BATCH", "print('first batch', flush=True); import time; time.sleep(60)")
    monkeypatch.setattr(loaders, "FIRST_BATCH_TIMEOUT", 2)
    started = time.perf_counter()
    with pytest.raises(ImagenetPackError, match="did not finish within 2 s"):
        loaders.time_to_first_batch("fused", tmp_path, 1, 4)
    assert time.perf_counter() - started < 20


def test_bench_ratios_pair_the_rounds():
    from imagenet_pack.bench.timing import ratio
    baseline = {"rounds_images_per_s": [60.0, 100.0, 100.0]}  # a slow spell in round 1 ...
    entry = {"rounds_images_per_s": [120.0, 200.0, 150.0]}  # ... and one in round 3
    assert ratio(entry, baseline) == 2.0  # per-round ratios 2, 2, 1.5; the medians' ratio would say 1.5


def test_bench_checks_the_plot_dependency_before_measuring(db_session, tree_session, tmp_path, capsys, monkeypatch):
    import builtins
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "matplotlib" else real(name, *a, **k))
    started = time.perf_counter()
    assert main(["bench", str(db_session), "--images", str(tree_session), "--plot", str(tmp_path / "x.png"),
                 "--device", "none"]) == 1
    assert time.perf_counter() - started < 5
    assert capsys.readouterr().err.strip() == ("imagenet-pack: error: --plot needs matplotlib: pip install -e "
                                               "'.[plot]' (or pip install matplotlib)")


BAD_BENCH = {  # option -> (arguments, what the one line says, exit status)
    "json in no folder": (["--json", "{tmp}/no/such/dir/x.json"], "no folder", 1),
    "json a folder": (["--json", "{tmp}"], "is a folder", 1),
    "plot without images": (["--plot", "{tmp}/x.png"], "add --images SRC", 1),
    "unknown arch": (["--accuracy", "--arch", "nosuch", "--weights", "{tmp}/w.pt"], "no such classification model", 1),
    "junk weights": (["--accuracy", "--arch", "resnet18", "--weights", "{tmp}/junk.pt"], "not a state dict", 1),
    "weights of another model": (["--accuracy", "--arch", "resnet34", "--weights", "{tmp}/w.pt"],
                                 "not a state dict of resnet34", 1),
    "weights without arch": (["--accuracy", "--weights", "{tmp}/w.pt"], "--weights needs --arch", 1),
    "arch without accuracy": (["--arch", "resnet18"], "--arch is for --accuracy", 2),
    "compare with no database": (["--accuracy", "--arch", "resnet18", "--weights", "{tmp}/w.pt", "--compare",
                                  "{tmp}"], "no database found", 1),
    "unusable device": (["--device", "nosuchdevice"], "--device nosuchdevice", 1),
}


@pytest.mark.parametrize("case", list(BAD_BENCH))
def test_bench_refuses_a_bad_option_or_output_before_reading_an_image(db_session, tmp_path, capsys, case):
    import torchvision
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp_path / "w.pt")
    (tmp_path / "junk.pt").write_bytes(os.urandom(1000))
    args, said, status = BAD_BENCH[case]
    started = time.perf_counter()
    try:
        code = main(["bench", str(db_session), "--rounds", "1", "--limit", "4", "--workers", "1",
                     *[a.format(tmp=tmp_path) for a in args]])
    except SystemExit as exc:  # a usage error
        code = exc.code
    err = capsys.readouterr().err
    assert code == status and said in err, (code, err)
    assert time.perf_counter() - started < 20 and "Traceback" not in err and "weights_only=False" not in err
    assert err.strip().splitlines()[-1].startswith(("imagenet-pack: error:", "imagenet-pack bench: error:"))


@pytest.mark.slow
def test_bench_accuracy_scores_every_read_path(tmp_path, capsys):
    """--accuracy with a model of one's own (random weights here: the rows mean nothing, the table's making
    is what is tested), on SRC in the devkit layout (a flat val holding 5 of the devkit's 1000 classes): the
    baselines read it as convert did, every pipeline is scored over the classes present, agreement is with
    the reference's predictions (the reference reads each record's own source file)."""
    import torchvision
    from helpers import devkit_tree
    src, db = devkit_tree(tmp_path / "src"), tmp_path / "db"
    assert main(["convert", str(src), str(db), "--no-progress", "--workers", "1"]) == 0
    weights = tmp_path / "r18.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), weights)
    out = tmp_path / "acc.json"
    capsys.readouterr()
    assert main(["bench", str(db), "--images", str(src), "--rounds", "1", "--limit", "4", "--batch-size", "2",
                 "--workers", "1", "--device", "none", "--accuracy", "--arch", "resnet18", "--weights", str(weights),
                 "--compare", str(db), "--json", str(out)]) == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert {"train-baseline", "val-baseline"} <= {r["name"] for r in report["results"]}
    table = report["accuracy"]
    names = [r["pipeline"] for r in table["rows"]]
    assert names[0].startswith("reference: ImageFolder + PIL") and (table["images"], table["of"]) == (4, 15)
    assert any(n.startswith("drop-in") for n in names) and any(n.startswith("GPU decode mode") for n in names)
    assert any("lossless" in n for n in names) and any("fused val decoder (opencv)" in n for n in names)
    rows = {r["pipeline"]: r for r in table["rows"]}
    assert rows[names[0]]["agreement"] == 100 and all(0 <= r["top1"] <= r["top5"] <= 100 for r in rows.values())
    assert all(r["images_per_s"] > 0 for r in rows.values())
    assert "accuracy of resnet18" in capsys.readouterr().out


def test_splits_named_with_splits_must_be_there_the_default_takes_those_present(tree, tmp_path, capsys):
    """--splits train,val over a tree with no val/ fails at once and says which split is missing (nothing
    written); without --splits, the missing val is a note and train is converted."""
    import shutil
    shutil.rmtree(tree / "val")
    dst = tmp_path / "db"
    assert main(["convert", str(tree), str(dst), "--splits", "train,val", "--no-progress", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no val data found, but --splits asks for train,val" in err
    assert not dst.exists()
    assert main(["convert", str(tree), str(dst), "--no-progress", "--workers", "1"]) == 0
    assert len(LmdbImageNet(dst, "train")) == 24


def test_bench_refuses_images_other_than_the_databases_before_timing(tree, tmp_path, capsys):
    """bench DB --images OTHER, OTHER holding other files than DB was made from: one line naming a missing
    source file, exit 1, before any loader is timed; the right images pass the check."""
    dst, other = tmp_path / "db", tmp_path / "other"
    assert main(["convert", str(tree), str(dst), "--no-progress", "--workers", "1"]) == 0
    make_sample_tree(other, classes=3, train_per_class=6, val_per_class=3, size=(48, 64), seed=9)
    capsys.readouterr()
    assert main(["bench", str(dst), "--images", str(other), "--rounds", "1", "--limit", "8"]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert "not the images" in captured.err and "give --images the SRC" in captured.err
    assert "timing" not in captured.out + captured.err
    from imagenet_pack.bench.folders import image_sources
    from imagenet_pack.bench.options import check_same_images
    check_same_images(image_sources(tree), tree, dst, {"train": "train", "val": "val"})


def test_a_partial_val_in_class_folders_passes_the_accuracy_check_before_anything_is_timed(tree, tmp_path):
    """val/ holding 3 of the 4 classes train/ has: the reference's class list is the database's (the classes
    of every split, as convert takes them), so the check made before timing passes; a database of other
    classes given to --compare fails it at once, naming the pipeline."""
    import shutil

    from imagenet_pack.bench.accuracy import check_pipelines
    from imagenet_pack.bench.folders import image_sources
    from imagenet_pack.bench.options import BenchOptions
    shutil.rmtree(sorted((tree / "val").iterdir())[0])
    assert main(["convert", str(tree), str(tmp_path / "db"), "--no-progress", "--workers", "1"]) == 0
    options = BenchOptions(images=tree, limit=4, accuracy=True)
    check_pipelines(tmp_path / "db", options, image_sources(tree))
    other = make_sample_tree(tmp_path / "other", classes=3, train_per_class=2, val_per_class=2, size=(48, 64), seed=4)
    assert main(["convert", str(other), str(tmp_path / "odb"), "--no-progress", "--workers", "1"]) == 0
    compare = BenchOptions(images=tree, limit=4, accuracy=True, databases=(tmp_path / "odb",))
    with pytest.raises(ImagenetPackError, match=r"fused val decoder on .*odb.*: its 3 classes are not the 4"):
        check_pipelines(tmp_path / "db", compare, image_sources(tree))
