"""tools/train.py under torchrun, 2 CPU processes with gloo, on a generated database; its options and its
checks of a checkpoint in process."""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagenet_pack import EpochSampler
from imagenet_pack.synthetic import make_sample_tree

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "tools" / "train.py"
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def train_module():
    """tools/train.py as a module, for its options and checks in process."""
    spec = importlib.util.spec_from_file_location("imagenet_pack_train_tool", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torchrun(db: Path, out: Path, *extra: str, processes: int = 2) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           str(TRAIN), str(db), "--arch", "resnet18", "--image-size", "32", "--batch-size", "4", "--workers", "0",
           "--device", "cpu", "--lr", "0.01", "--log-samples", "--output", str(out), *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def samples(out: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (out / f"samples-rank{rank}.jsonl").read_text().splitlines()]


def per_epoch(out: Path) -> dict[int, list[list[int]]]:
    epochs: dict[int, list[list[int]]] = {}
    for rank in (0, 1):
        for entry in samples(out, rank):
            epochs.setdefault(entry["epoch"], [[], []])[rank].extend(entry["indices"])
    return epochs


@pytest.fixture(scope="module")
def full_run(db_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "full"
    torchrun(db_session, out, "--epochs", "2")
    return out


@slow
def test_ranks_see_disjoint_shares_covering_the_split_each_epoch(full_run):
    epochs = per_epoch(full_run)
    assert sorted(epochs) == [0, 1]
    for epoch, shares in epochs.items():
        assert not set(shares[0]) & set(shares[1])
        assert sorted(shares[0] + shares[1]) == list(range(24))
        for rank in (0, 1):  # each rank trains its sampler's order for the seed: the same order every run
            order = EpochSampler(24, seed=0, rank=rank, world_size=2).indices(epoch).tolist()
            assert shares[rank] == order[:len(shares[rank])]
    assert epochs[0] != epochs[1]  # a new order every epoch
    logs = [json.loads(line) for line in (full_run / "log.jsonl").read_text().splitlines()]
    assert [entry["val_images"] for entry in logs] == [12, 12]  # every val sample once, none twice
    assert all(0 <= entry["data_wait"] <= 1 and entry["images_per_s"] > 0 for entry in logs)
    assert (full_run / "checkpoint.pt").is_file() and not (full_run / "checkpoint.tmp").exists()


@slow
def test_stopped_mid_epoch_and_resumed_sees_exactly_the_rest(full_run, db_session, tmp_path):
    out = tmp_path / "preempted"
    torchrun(db_session, out, "--epochs", "2", "--exit-after-steps", "2")  # 3 steps per epoch: stops mid-epoch
    assert len(samples(out, 0)) == 2
    torchrun(db_session, out, "--epochs", "2", "--resume")
    assert per_epoch(out) == per_epoch(full_run)
    for rank in (0, 1):
        steps = [entry["step"] for entry in samples(out, rank)]
        assert steps == list(range(6))  # no step twice, none missing


@slow
@pytest.mark.parametrize("before, after", [(2, 3), (3, 2)])
def test_preempted_and_resumed_on_another_world_size_sees_every_sample_once(db_session, tmp_path, before, after):
    out = tmp_path / "elastic"
    common = ("--epochs", "1", "--batch-size", "2")
    torchrun(db_session, out, *common, "--exit-after-steps", "2", processes=before)
    torchrun(db_session, out, *common, "--resume", processes=after)
    seen = [i for rank in range(max(before, after)) if (out / f"samples-rank{rank}.jsonl").exists()
            for entry in samples(out, rank) for i in entry["indices"] if entry["epoch"] == 0]
    consumed = before * 2 * 2
    padding = (-(24 - consumed)) % after
    assert set(seen) == set(range(24)) and len(seen) == 24 + padding  # each once; padding only at the end


@slow
def test_gpu_check_runs_every_section_on_cpu(tmp_path):
    """The prepared GPU check, on the CPU device: the decode micro-benchmark, the device path's cost, the
    feeds of the device path beside the bound (each in a fresh process; the CPU feed's row is the bench's,
    checked there), exact resume, the summary last."""
    images = tmp_path / "jpegs"
    make_sample_tree(images, classes=2, train_per_class=3, val_per_class=1, size=(48, 64))
    script = TRAIN.parent / "gpu_check.py"
    result = subprocess.run([sys.executable, str(script), "--device", "cpu", "--arch", "resnet18", "--batch-size", "4",
                             "--image-size", "32", "--steps", "2", "--images", str(images / "train"), "--count", "24",
                             "--workers", "1", "--resume-shares", "auto", "--feeds", "synthetic,gpu,hybrid",
                             "--stages"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    for label in ("GPU decode mode", "hybrid, auto share", "synthetic on device (compute bound)"):
        line = next(x for x in out.splitlines() if x.strip().startswith(label))
        assert float(line.split(label)[1].split()[0]) > 0, line
    assert "torchvision.io.decode_jpeg" in out and "to OpenCV 0" in out
    assert "torch operations" in out and "each feed in a fresh process" in out
    stages = next(x for x in out.splitlines() if "per batch (wall time):" in x)
    assert all(f"{stage} " in stages for stage in ("pinned", "prepare", "decode", "table", "resample", "merge"))
    assert "--gpu-share auto: 6 steps, 24 samples: each once, in the epoch's order" in out
    assert out.index("summary (CPU device") > out.index("--gpu-share auto:")  # the summary comes last
    assert out.strip().endswith("gpu check: every check holds")


@slow
def test_the_readme_smoke_run_stops_at_its_step_limit_as_written(db_session, tmp_path):
    """The README's CPU smoke command, run as it stands there (on a generated database): a few steps, a short
    val pass, a checkpoint, done."""
    line = next(x for x in (ROOT / "README.md").read_text().splitlines()
                if "tools/train.py" in x and "--max-steps" in x and "--device cpu" in x)
    args = shlex.split(line.strip().strip("`"))
    args = [str(db_session) if a.endswith("imagenet-lmdb") else str(tmp_path / "smoke") if a == "/tmp/smoke" else a
            for a in args]
    assert args[0] == "python" and args[1] == "tools/train.py"
    result = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = [json.loads(x) for x in (tmp_path / "smoke" / "log.jsonl").read_text().splitlines()]
    steps, batch = int(args[args.index("--max-steps") + 1]), int(args[args.index("--batch-size") + 1])
    assert all(entry["val_images"] <= steps * batch for entry in logged)  # the val pass limited too
    import torch
    assert torch.load(tmp_path / "smoke" / "checkpoint.pt", weights_only=True)["step"] == steps


@slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_checkpoints_and_exits_with_one_line(db_session, tmp_path, signum):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM to the trainer (as
    torchrun forwards a scheduler's to each rank): the step in flight finishes, a checkpoint is written, one
    line says so, exit 128 + signal, no traceback, no process left behind."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(TRAIN), str(db_session), "--arch", "resnet18", "--image-size", "32",
                             "--batch-size", "4", "--workers", "2", "--device", "cpu", "--epochs", "1000",
                             "--log-samples", "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    log = out / "samples-rank0.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 2):
        time.sleep(0.05)
    (os.killpg if signum == signal.SIGINT else os.kill)(proc.pid, signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stdout + stderr
    assert "Traceback" not in stdout + stderr
    said = [x for x in (stdout + stderr).splitlines() if "interrupted" in x]
    assert len(said) == 1 and "checkpoint saved" in said[0] and "--resume" in said[0]
    assert (out / "checkpoint.pt").is_file()
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert not left, f"processes left in the group: {left}"


@pytest.mark.parametrize("option, value, said", [("--max-steps", "0", "must be at least 1, got 0"),
                                                 ("--batch-size", "0", "must be at least 1, got 0"),
                                                 ("--epochs", "-2", "must be at least 1, got -2"),
                                                 ("--image-size", "0", "must be at least 1, got 0"),
                                                 ("--gpu-share", "1.5", "a share from 0 to 1, or auto")])
def test_a_bad_option_is_a_usage_error_naming_it(train_module, tmp_path, capsys, option, value, said):
    with pytest.raises(SystemExit) as exit_:
        train_module.parse_args([str(tmp_path), "--output", str(tmp_path), option, value])
    assert exit_.value.code == 2 and f"argument {option}: " in capsys.readouterr().err
    capsys.readouterr()


@pytest.mark.parametrize("damage, said", [
    ("cut", "not a whole checkpoint ("), ("junk", "not a whole checkpoint ("),
    ("arch", "written by a run with --arch resnet18, this one has --arch resnet34"),
    ("classes", "its model does not fit --arch resnet18 with 4 classes"),
    ("fields", "not a checkpoint of this script (no optimizer, loader, step)")])
def test_a_checkpoint_that_cannot_resume_this_run_is_one_line(train_module, db_session, tmp_path, capsys, damage,
                                                               said):
    import torch
    import torchvision
    out = tmp_path / "run"
    out.mkdir()
    model = torchvision.models.resnet18(num_classes=4 if damage != "classes" else 7)
    state = {"model": model.state_dict(), "optimizer": {}, "loader": {}, "step": 3,
             "args": {"arch": "resnet18"}}
    torch.save({"model": state["model"]} if damage == "fields" else state, out / "checkpoint.pt")
    if damage == "cut":
        (out / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes()[:5000])
    elif damage == "junk":
        (out / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    arch = "resnet34" if damage == "arch" else "resnet18"
    code = train_module.main([str(db_session), "--output", str(out), "--resume", "--arch", arch, "--device", "cpu",
                              "--workers", "0", "--image-size", "16", "--batch-size", "4"])
    err = capsys.readouterr().err
    assert code == 1 and said in err and err.count("\n") == 1 and "weights_only=False" not in err, err


@slow
def test_a_step_limited_run_resumes_mid_epoch_and_max_steps_counts_every_run(db_session, tmp_path):
    """--max-steps 2 then --resume --max-steps 5: the second run goes on inside epoch 0 with the samples the
    first did not see (not epoch 1), and runs 3 steps, for 5 in all."""
    out = tmp_path / "run"
    args = [sys.executable, str(TRAIN), str(db_session), "--arch", "resnet18", "--image-size", "32", "--batch-size",
            "4", "--workers", "0", "--device", "cpu", "--log-samples", "--output", str(out)]
    first = subprocess.run(args + ["--max-steps", "2"], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run(args + ["--max-steps", "5", "--resume"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from" in second.stdout and "epoch 0, 8 samples of it consumed" in second.stdout
    logged = samples(out, 0)
    assert [entry["step"] for entry in logged] == [0, 1, 2, 3, 4] and {e["epoch"] for e in logged} == {0}
    seen = [i for entry in logged for i in entry["indices"]]
    assert len(seen) == len(set(seen)) == 20  # five batches of the same epoch, none repeated


def test_an_unknown_arch_is_one_line_naming_it(train_module, db_session, tmp_path, capsys):
    code = train_module.main([str(db_session), "--device", "cpu", "--arch", "resnet999", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "train.py: error: --arch resnet999: torchvision has no such classification model (e.g. resnet18, resnet50, "
        "efficientnet_b0)"]
