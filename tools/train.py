"""Train a torchvision model on an imagenet-pack database, on one GPU, one node or many (torchrun).

    python tools/train.py /data/imagenet-lmdb --arch resnet50 --epochs 90 --batch-size 256 --output runs/r50
    torchrun --standalone --nproc_per_node 8 tools/train.py /data/imagenet-lmdb --output runs/r50
    torchrun --nnodes 4 --node_rank $RANK --rdzv_backend c10d --rdzv_endpoint $HOST:29500 \\
        --nproc_per_node 8 tools/train.py /local/imagenet-lmdb --output /shared/runs/r50

Fused uint8 decoders in the workers, normalisation on the GPU (bf16 autocast, channels_last on CUDA), SGD with
linear warm-up then cosine (or step) decay, label smoothing, top-1/top-5 on the whole val split with every
sample counted exactly once across ranks. Checkpoints are atomic (temp file, then rename) and hold the
model, optimiser, epoch and the loader's position, so ``--resume`` continues mid-epoch with exactly the
samples not yet seen. ``--batch-size`` is per process; ``--lr`` is for the global batch. Ctrl-C finishes the
step in flight, saves a checkpoint and exits (a second Ctrl-C exits at once).

    python tools/train.py DB --device cpu --arch resnet18 --batch-size 16 --image-size 64 --max-steps 5 \\
        --output /tmp/smoke                                      # a smoke run: 5 steps, 5 val batches, done
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision

from imagenet_pack import (
    CenterCropDecoder,
    CudaPrefetcher,
    ImagenetPackError,
    LmdbImageNet,
    RandomResizedCropDecoder,
    build_loader,
)
from imagenet_pack.arguments import positive_int
from imagenet_pack.gpu.share import check_share
from imagenet_pack.read.decoders import BACKENDS

CHECKPOINT = "checkpoint.pt"


def gpu_share(text: str) -> float | str:
    """0 to 1, or "auto" (the hybrid feed's own rule, :func:`imagenet_pack.gpu.share.check_share`)."""
    try:
        return check_share(text if text == "auto" else float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1, or auto; got {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="database directory written by `imagenet-pack convert`")
    p.add_argument("--arch", default="resnet50", help="any torchvision.models name (default: resnet50)")
    p.add_argument("--epochs", type=positive_int, default=90, help="epochs to train (default: 90)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="per process (default: 256)")
    p.add_argument("--workers", type=int, default=None,
                   help="loader workers per process (default: the host's cores / its processes, less two with "
                        "--gpu-share)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate for the global batch (default: 0.1)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay (default: 1e-4)")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up length (default: 1)")
    p.add_argument("--schedule", choices=("cosine", "step"), default="cosine",
                   help="after warm-up: cosine to 0, or /10 every 30 epochs (default: cosine)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="cross-entropy label smoothing (default: 0.1)")
    p.add_argument("--image-size", type=positive_int, default=224, help="train crop and val crop size (default: 224)")
    p.add_argument("--decode-backend", choices=BACKENDS, default="auto",
                   help="fused decoders' JPEG decoding on the CPU: nvimgcodec (nvImageCodec's CPU backend, only "
                        "the crop's region), opencv (full decode); the same pixels; auto (default): nvimgcodec "
                        "where installed, else opencv")
    p.add_argument("--gpu-share", type=gpu_share, default=0.0,
                   help="share of every train batch decoded on the GPU (hybrid feed: 0 to 1, or auto to measure "
                        "both rates and split in proportion; default: 0, all on the CPU workers)")
    p.add_argument("--output", type=Path, required=True, help="directory for checkpoints and logs")
    p.add_argument("--resume", action="store_true", help=f"continue from OUTPUT/{CHECKPOINT} if it exists")
    p.add_argument("--seed", type=int, default=0, help="sample order, crops and initial weights (default: 0)")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop after N training steps in all, then evaluate N val batches and checkpoint (a smoke "
                        "run; default: train every epoch, evaluate the whole val split)")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also checkpoint every N steps inside an epoch (0: only at epoch ends)")
    p.add_argument("--exit-after-steps", type=positive_int, default=None,
                   help="checkpoint and exit after N steps in this run, as a preempted job would (for tests)")
    p.add_argument("--log-samples", action="store_true",
                   help="write every step's sample indices to OUTPUT/samples-rank<R>.jsonl (audits, tests)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda (default when available) or cpu (gloo backend)")
    return p.parse_args(argv)


def setup(device_name: str) -> tuple[int, int, torch.device]:
    """Rank, world size and device from torchrun's environment (LOCAL_RANK etc.); single process without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(device_name, local) if device_name == "cuda" else torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def learning_rate(args, step: int, steps_per_epoch: int) -> float:
    epoch = step / steps_per_epoch
    if epoch < args.warmup_epochs:
        return args.lr * (epoch + 1 / steps_per_epoch) / args.warmup_epochs
    if args.schedule == "step":
        return args.lr * 0.1 ** int(epoch // 30)
    progress = (epoch - args.warmup_epochs) / max(1e-9, args.epochs - args.warmup_epochs)
    return args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


CHECKPOINT_KEYS = ("model", "optimizer", "loader", "step")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """The checkpoint at ``path``, loaded as plain tensors and containers only (never code: a checkpoint is
    data). ImagenetPackError in one line if it is cut short, not a checkpoint, or lacks what a resume needs."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on a damaged file
        raise ImagenetPackError(f"{path}: not a whole checkpoint ({type(exc).__name__}: the file is cut short, "
                                "damaged or not one this script wrote); remove it to start over, or resume from "
                                "another --output") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ImagenetPackError(f"{path}: not a checkpoint of this script (no {', '.join(missing)})")
    if type(state["step"]) is not int or state["step"] < 0:
        raise ImagenetPackError(f"{path}: its step is {state['step']!r}, not a count of steps")
    return state


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic and durable: written to a temporary file, flushed to disk, renamed into place, the rename
    flushed too, so a crash or power loss leaves the previous checkpoint or this one, never a torn file."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        torch.save(state, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@torch.no_grad()
def evaluate(model, loader, device, amp, max_batches: int | None = None) -> tuple[float, float, int]:
    """Top-1 and top-5 over the whole val split (or its first ``max_batches``); each rank evaluates its
    disjoint share, counts are summed."""
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)
    for batch, (images, targets) in enumerate(loader):
        if max_batches is not None and batch >= max_batches:
            break
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        top5 = logits.float().topk(min(5, logits.shape[1]), dim=1).indices  # top-k for k <= classes
        counts[0] += (top5[:, 0] == targets).sum()
        counts[1] += (top5 == targets[:, None]).any(dim=1).sum()
        counts[2] += len(targets)
    if dist.is_initialized():
        dist.all_reduce(counts)
    model.train()
    return float(counts[0] / counts[2]), float(counts[1] / counts[2]), int(counts[2])


class Run:
    """One training process: its data, model and optimiser, and where it is (epoch, global step)."""

    def __init__(self, args: argparse.Namespace):
        if args.arch not in torchvision.models.list_models(module=torchvision.models):
            raise ImagenetPackError(f"--arch {args.arch}: torchvision has no such classification model (e.g. "
                                    "resnet18, resnet50, efficientnet_b0)")
        self.args = args
        self.rank, self.world, self.device = setup(args.device)
        self.cuda = self.device.type == "cuda"
        torch.manual_seed(args.seed)
        args.output.mkdir(parents=True, exist_ok=True)
        self.checkpoint = args.output / CHECKPOINT
        self.train_loader, self.val_loader, classes = build_loaders(args, self.world, self.device)
        self.model_classes = classes
        self.model = torchvision.models.get_model(args.arch, num_classes=classes).to(self.device)
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=args.lr, momentum=args.momentum,
                                         weight_decay=args.weight_decay)
        self.step, self.run_steps = 0, 0
        self.stop_reason: str | None = None
        self.samples_log = open(args.output / f"samples-rank{self.rank}.jsonl", "a") if args.log_samples else None
        self.exit_code = 0
        for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C; a scheduler's notice before preemption
            signal.signal(signum, self.interrupted)

    def interrupted(self, signum, frame) -> None:
        """Ctrl-C or SIGTERM: finish the step in flight, checkpoint, exit; a second Ctrl-C exits at once."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.stop_reason, self.exit_code = "interrupted", 128 + signum

    def should_stop(self) -> bool:
        """Whether to stop after this step. Alone, at once; with several processes, every 25 steps, agreed by
        all of them (one all-reduce: a rank stopping alone would leave the others waiting in theirs)."""
        if self.world == 1:
            return self.stop_reason is not None
        if self.run_steps % 25 and self.args.exit_after_steps is None:
            return False
        flag = torch.tensor([self.stop_reason is not None], dtype=torch.float32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.stop_reason is None:
            self.stop_reason, self.exit_code = "interrupted", 130
        return bool(flag.item())

    def resume(self) -> None:
        """Load model, optimiser, step and loader position from the checkpoint, if asked and present."""
        if not (self.args.resume and self.checkpoint.is_file()):
            return
        state = load_checkpoint(self.checkpoint, self.device)
        written_for = state["args"].get("arch") if isinstance(state.get("args"), dict) else None
        if written_for is not None and written_for != self.args.arch:
            raise ImagenetPackError(f"{self.checkpoint}: written by a run with --arch {written_for}, this one has "
                                    f"--arch {self.args.arch}: pass --arch {written_for}, or another --output")
        try:
            self.model.load_state_dict(state["model"])
        except (RuntimeError, KeyError, TypeError) as exc:
            raise ImagenetPackError(f"{self.checkpoint}: its model does not fit --arch {self.args.arch} with "
                                    f"{self.model_classes} classes ({_first_line(exc)}); it was written for another "
                                    "model or database: resume with those, or use another --output") from None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.train_loader.load_state_dict(state["loader"])
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise ImagenetPackError(f"{self.checkpoint}: {_first_line(exc)}; it was written by another run: use "
                                    "another --output") from None
        self.step = state["step"]
        if self.rank == 0:
            print(f"resumed from {self.checkpoint}: epoch {state['loader']['epoch']}, {state['loader']['consumed']} "
                  f"samples of it consumed by the job, the rest dealt to {self.world} process(es)")

    def save(self) -> None:
        """Rank 0 writes the checkpoint (every rank's loader position is the same count of samples)."""
        if self.rank == 0:
            save_checkpoint(self.checkpoint, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                "loader": self.train_loader.state_dict(),
                "args": vars(self.args) | {"root": str(self.args.root), "output": str(self.args.output)}})

    def train_epoch(self, epoch: int, ddp: torch.nn.Module) -> dict | None:
        """Train until the epoch ends; None when the run stops inside it (--exit-after-steps, Ctrl-C)."""
        loader = self.train_loader
        epoch_order = loader.sampler.indices(epoch)
        started = time.perf_counter()
        batches = CudaPrefetcher(loader, self.device, dtype=torch.float32, channels_last=self.cuda).batches()
        try:
            stats = self._train_epoch(epoch, ddp, batches, epoch_order, started)
        finally:
            batches.close()  # stops its look-ahead; what it held ahead is delivered again next time
        return stats  # left early (--max-steps): the loader keeps its place, and a resumed run goes on from it

    def _train_epoch(self, epoch, ddp, batches, epoch_order, started) -> dict | None:
        args, loader = self.args, self.train_loader
        seen, waited, loss = 0, 0.0, None
        while args.max_steps is None or self.step < args.max_steps:  # --max-steps counts every run's steps
            t0 = time.perf_counter()
            delivered = loader.delivered  # samples received so far (the prefetcher holds some ahead)
            batch = next(batches, None)
            waited += time.perf_counter() - t0
            if batch is None:
                break
            images, targets = batch
            if self.samples_log is not None:
                self.samples_log.write(json.dumps({"epoch": epoch, "step": self.step, "indices":
                                                   epoch_order[delivered:delivered + len(targets)].tolist()}) + "\n")
                self.samples_log.flush()
            loss = self.train_step(ddp, images, targets, len(loader))
            seen, self.run_steps = seen + len(targets), self.run_steps + 1
            if args.checkpoint_every and self.step % args.checkpoint_every == 0:
                self.save()
            if args.exit_after_steps is not None and self.run_steps >= args.exit_after_steps:
                self.stop_reason = f"exiting after {self.run_steps} steps (as --exit-after-steps asked)"
            if self.should_stop():
                self.save()
                if self.rank == 0:
                    print(f"{self.stop_reason} at epoch {epoch}, step {self.step}; checkpoint saved to "
                          f"{self.checkpoint}: rerun with --resume to continue", flush=True)
                return None
        if self.cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        return {"images_per_s": seen * self.world / elapsed, "data_wait": waited / elapsed,
                "loss": float(loss) if loss is not None else float("nan")}

    def train_step(self, ddp: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
                   steps_per_epoch: int) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.args, self.step, steps_per_epoch)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            loss = F.cross_entropy(ddp(images), targets, label_smoothing=self.args.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.detach()

    def report(self, epoch: int, stats: dict) -> None:
        """Evaluate on the whole val split, checkpoint, and log the epoch (rank 0 prints and writes)."""
        val, before = CudaPrefetcher(self.val_loader, self.device, channels_last=self.cuda), self.val_loader.epoch
        top1, top5, counted = evaluate(self.model, val, self.device, self.cuda, self.args.max_steps)
        if self.val_loader.epoch == before:  # a smoke run's partial pass: the next one starts at the beginning
            self.val_loader.finish_epoch()
        self.save()
        if self.rank == 0:
            print(f"epoch {epoch}: loss {stats['loss']:.3f}, {stats['images_per_s']:.0f} images/s, data wait "
                  f"{stats['data_wait']:.0%} of step time, val top-1 {top1:.2%} top-5 {top5:.2%} on {counted} images",
                  flush=True)
            with open(self.args.output / "log.jsonl", "a") as out:
                out.write(json.dumps({"epoch": epoch, **stats, "top1": top1, "top5": top5,
                                      "val_images": counted}) + "\n")


def build_loaders(args: argparse.Namespace, world: int, device: torch.device) -> tuple:
    """Train and val loaders with the fused decoders, and the number of classes."""
    workers = args.workers  # None: this process's share of its host's cores (LoaderOptions.worker_count)
    train_set = LmdbImageNet(args.root, "train", decoder=RandomResizedCropDecoder(
        args.image_size, seed=args.seed, backend=args.decode_backend))
    val_set = LmdbImageNet(args.root, "val", decoder=CenterCropDecoder(args.image_size, backend=args.decode_backend))
    train_loader = build_loader(train_set, args.batch_size, train=True, workers=workers, seed=args.seed,
                                gpu_share=args.gpu_share, device=device)
    val_loader = build_loader(val_set, args.batch_size, train=False, workers=workers, persistent_workers=False)
    return train_loader, val_loader, len(train_set.wnids)


def main(argv=None) -> int:
    try:
        run = Run(parse_args(argv))
        run.resume()
        ddp = torch.nn.parallel.DistributedDataParallel(run.model, device_ids=[run.device.index] if run.cuda else
                                                        None) if run.world > 1 else run.model
        for epoch in range(run.train_loader.epoch, run.args.epochs):
            stats = run.train_epoch(epoch, ddp)
            if stats is None:
                break
            run.report(epoch, stats)
            if run.args.max_steps is not None and run.step >= run.args.max_steps:
                break  # a smoke run ends here, mid-epoch: evaluated and checkpointed
    except ImagenetPackError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        print("train.py: interrupted (no checkpoint written since the last one)", file=sys.stderr)
        return 130
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return run.exit_code


if __name__ == "__main__":
    sys.exit(main())
