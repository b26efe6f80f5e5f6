"""One short check on a CUDA machine: GPU decode speed and pixels, the device path's host cost, the training
feeds, exact resume, ranks; a summary against the targets last.

    python tools/gpu_check.py --images .sample --count 8192                 # real JPEGs, replicated
    python tools/gpu_check.py --images .sample --count 8192 --short-side 256
    python tools/gpu_check.py --device cpu --arch resnet18 ...              # the same code without a GPU

1. Decode micro-benchmark: GPU decode + RandomResizedCrop + flip to uint8, one staged batch of
   ``--batch-size`` records, for each nvImageCodec decoder arrangement (engine then hybrid; each alone; GPU
   Huffman for all) and the torchvision fallback: images/s (median of 5 after a warm-up), images given to
   OpenCV, regions or whole images, and the pixel error against the CPU fused decoder on the same records and
   plans (mean, and each edge row and column).
2. The hybrid loader (every sample on the device, and half) through ``CudaPrefetcher`` against the CPU-only
   loader: same targets, pixel error.
3. The device path's host cost per batch (every row on the device): torch operations, host time, CUDA
   runtime calls and copies from pageable memory (the profiler's count); with ``--stages``, each stage's time
   per batch (on the host, in the thread that prepares batches ahead: pinned copy, prepare; on the device: merge,
   decode, table, resample: CUDA events on a GPU, wall time on the CPU device).
4. Training feed, ResNet-50 bf16 channels_last (``--arch``), each feed of ``--feeds`` in a fresh process:
   synthetic batches on the device (the compute bound), CPU fused loader, GPU decode mode, hybrid
   (``--hybrid-share``, default "auto"), and the pipeline (GPU decode mode through ``CudaPrefetcher`` with no
   model: the data path alone, and its peak device memory): images/s, fraction of the bound, data wait; the
   timed steps under CUDA's sync debug mode (``--sync-debug``, default error). A feed that fails is a row
   that says why, never the end of the check.
5. Exact resume: ``tools/train.py --log-samples`` stopped after 3 steps and resumed, with the CPU feed,
   ``--gpu-share 0.5`` and ``auto``: every sample of the epoch logged once, in the epoch's order.
6. Ranks: with two or more GPUs, two processes each decoding on its own device (else says so).

``--images DIR`` takes real JPEGs (a flat folder of ``<wnid>_*.JPEG``, or class folders), copied to
``--count`` files; without it a generated ImageNet-like sample of ``--count`` images is used.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from imagenet_pack import ConvertOptions, CudaPrefetcher, LmdbImageNet, RandomResizedCropDecoder, build_loader, convert
from imagenet_pack.bench.feed import FEED_NAMES, FEEDS, decode_benchmark, device_path_cost, edge_errors, train_from_feed
from imagenet_pack.gpu.device import device_count, device_name
from imagenet_pack.machine import default_workers
from imagenet_pack.read import nvcodec
from imagenet_pack.synthetic import make_sample_tree

TRAIN = Path(__file__).resolve().parent / "train.py"


def source_tree(images: Path | None, out: Path, count: int) -> Path:
    """``out/train/<wnid>/`` and one val image per class: ``images`` copied round-robin to ``count`` files, or
    a generated sample."""
    if images is None:
        return make_sample_tree(out, classes=16, train_per_class=max(1, count // 16), val_per_class=1)
    files = sorted(images.rglob("*.JPEG")) + sorted(images.rglob("*.jpg"))
    if not files:
        raise SystemExit(f"{images}: no JPEG files")
    for k in range(count):
        f = files[k % len(files)]
        wnid = f.parent.name if f.parent != images else f.name.split("_")[0]
        for split, name in (("train", f"{k}_{f.name}"), ("val", f.name)):
            folder = out / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            if split == "train" or not (folder / name).exists():
                shutil.copyfile(f, folder / name)
    return out


def hybrid_against_cpu(db: Path, device: torch.device, batch: int, size: int, workers: int) -> bool:
    """The hybrid loader through CudaPrefetcher (share 1.0 and 0.5) against the CPU-only loader, 4 batches."""
    ok = True

    def first(loader, n=4):
        out = []
        for k, (x, y) in enumerate(CudaPrefetcher(loader, device, dtype=torch.float32)):
            out.append((x.cpu(), y.cpu()))
            if k + 1 == n:
                break
        return out

    ds = LmdbImageNet(db, "train", decoder=RandomResizedCropDecoder(size, backend="opencv", seed=3))
    reference = first(build_loader(ds, batch, workers=workers, seed=7))
    for share in (1.0, 0.5):
        got = first(build_loader(ds, batch, workers=workers, seed=7, gpu_share=share, device=device))
        same = all(torch.equal(a[1], b[1]) for a, b in zip(reference, got))
        scale = 255 * 0.226  # normalised -> levels of 255
        errors = edge_errors(torch.cat([x for x, _ in got]) * scale, torch.cat([x for x, _ in reference]) * scale)
        print(f"  share {share}: targets {'equal' if same else 'DIFFER'}; "
              + ", ".join(f"{k} {v:.2f}" for k, v in errors.items()) + " levels")
        ok &= same and errors["mean"] <= 1.5 and max(v for k, v in errors.items() if k != "mean") <= 3.0
    return ok


def resume_check(db: Path, device: torch.device, out: Path, arch: str, batch: int, size: int, workers: int,
                 share: str) -> bool:
    """tools/train.py preempted after 3 steps and resumed: every sample of epoch 0 once, in the epoch's order."""
    args = [sys.executable, str(TRAIN), str(db), "--arch", arch, "--epochs", "1", "--batch-size", str(batch),
            "--image-size", str(size), "--workers", str(workers), "--device", device.type, "--output", str(out),
            "--log-samples", "--gpu-share", share]
    for extra in (["--exit-after-steps", "3"], ["--resume"]):
        result = subprocess.run(args + extra, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            print(result.stderr[-2000:])
            return False
    logged = [json.loads(line) for line in (out / "samples-rank0.jsonl").read_text().splitlines()]
    seen = [i for entry in logged if entry["epoch"] == 0 for i in entry["indices"]]
    order = build_loader(LmdbImageNet(db, "train", decoder="tensor"), batch, workers=0).sampler.order(0)
    expected = order[:len(order) // batch * batch].tolist()
    ok = seen == expected
    print(f"  --gpu-share {share}: {len(logged)} steps, {len(seen)} samples: "
          + ("each once, in the epoch's order" if ok else "NOT the epoch's order (repeats or gaps)"))
    return ok


def ranks_check(db: Path, out: Path, size: int) -> bool:
    """Two ranks (torchrun) each decoding on its own GPU; skipped with fewer than two GPUs."""
    if device_count() < 2:
        print(f"  {device_count()} GPU(s) here: the two-rank check needs two, skipped")
        return True
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(TRAIN), str(db), "--arch", "resnet18",
           "--epochs", "1", "--batch-size", "64", "--image-size", str(size), "--workers", "2", "--gpu-share", "1.0",
           "--max-steps", "3", "--output", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    print(f"  two ranks, GPU decode on each rank's own device: exit {result.returncode}")
    return result.returncode == 0


def one_feed(args) -> int:
    """Run in a fresh process per feed (``--one-feed NAME --db DB``): its row as one JSON line."""
    ds = LmdbImageNet(args.db, "train", decoder=RandomResizedCropDecoder(args.image_size, backend="auto"))
    share = args.hybrid_share if args.one_feed == "hybrid" else None
    row = train_from_feed(ds, args.one_feed, arch=args.arch, batch_size=args.batch_size, steps=args.steps,
                          workers=args.workers, device=torch.device(args.device), sync_debug=args.sync_debug,
                          share=share if share == "auto" or share is None else float(share))
    print("FEED " + json.dumps(row), flush=True)
    return 0


def feeds_in_fresh_processes(db: Path, args) -> list[dict]:
    """Each feed of ``--feeds`` in a process of its own (no feed inherits another's warm caches, workers or
    GPU memory); rows with their fraction of the synthetic bound where it ran. A feed that fails is a row with
    its ``error``."""
    rows: list[dict] = []
    for feed in args.feeds:
        command = [sys.executable, __file__, "--one-feed", feed, "--db", str(db), "--arch", args.arch,
                   "--batch-size", str(args.batch_size), "--image-size", str(args.image_size), "--steps",
                   str(args.steps), "--workers", str(args.workers), "--device", args.device, "--sync-debug",
                   args.sync_debug, "--hybrid-share", str(args.hybrid_share)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            rows.append({"feed": FEED_NAMES[feed], "error": "no result within 900 s"})
            continue
        line = next((x for x in result.stdout.splitlines() if x.startswith("FEED ")), None)
        if result.returncode != 0 or line is None:
            last = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
            rows.append({"feed": FEED_NAMES[feed], "error": last[-300:]})
            continue
        rows.append(json.loads(line[5:]))
    bound = next((r["images_per_s"] for r in rows if r["feed"] == FEED_NAMES["synthetic"] and "error" not in r), None)
    return [{**row, "of_bound": row["images_per_s"] / bound if bound and "error" not in row else None}
            for row in rows]


def summary(cuda: bool, decode: dict, cost: dict, feeds: list[dict]) -> list[str]:
    """The measured figures against the targets (on a GPU; on a CPU device the figures mean little)."""
    rows = []
    measured = [row for row in decode.values() if "images_per_s" in row]
    if measured:
        best = max(measured, key=lambda r: r["images_per_s"])
        edges = max(best[k] for k in ("top row", "bottom row", "left column", "right column"))
        rows += [("GPU decode + crop + flip, one stream, images/s", f"{best['images_per_s']:.0f}", ">= 12000"),
                 ("  its error vs CPU fused: mean / worst edge", f"{best['mean']:.2f} / {edges:.2f}", "<= 1.0 / 3.0")]
    rows += [("device path per batch: CUDA runtime calls", f"{cost['cuda_runtime_calls']:.0f}", "<= 100"),
             ("device path per batch: pageable copies", f"{cost['pageable_copies']:.0f}", "0")]
    for row in feeds:
        if "error" in row:
            rows.append((f"{row['feed']}", "FAILED", row["error"][:80]))
            continue
        target = {"GPU decode mode": ">= 0.95 of the ResNet-50 bound",
                  "hybrid, auto share": ">= 0.95 of the ResNet-18 bound, wait <= 5%"}.get(row["feed"])
        if target and row["of_bound"] is not None:
            rows.append((f"{row['feed']}: fraction of the bound, data wait",
                         f"{row['of_bound']:.2f}, {row['data_wait']:.0%}", target))
        if row["feed"] == FEED_NAMES["pipeline"] and row.get("peak_bytes") is not None:
            rows.append(("data path peak device memory", f"{row['peak_bytes'] / 2**30:.2f} GiB", "<= 2 GiB"))
    width = max(len(r[0]) for r in rows)
    lines = [f"summary ({'CUDA' if cuda else 'CPU device: the code path, not the speed'}):"]
    lines += [f"  {name:<{width}}  {value:>14}   target {target}" for name, value, target in rows]
    return lines


def nvjpeg_text() -> str:
    """Which nvJPEG nvImageCodec loads, and so which way the device decodes boxes."""
    version = nvcodec.nvjpeg_version()
    if version is None:
        return "no nvJPEG"
    way = "regions" if version[:2] >= nvcodec.REGIONS_FROM_NVJPEG else "whole images, boxes cut by the resample"
    return f"nvJPEG {'.'.join(map(str, version))} ({way})"


def feed_list(text: str) -> tuple[str, ...]:
    feeds = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in feeds if name not in FEEDS]
    if unknown or not feeds:
        raise argparse.ArgumentTypeError(f"unknown feed {', '.join(unknown) or text!r}: choose from {','.join(FEEDS)}")
    return feeds


def share_value(text: str) -> str | float:
    if text == "auto":
        return text
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share from 0 to 1, nor auto")
    return share


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, help="existing database (default: convert --images or a generated sample)")
    p.add_argument("--images", type=Path, help="real JPEGs to use (flat <wnid>_*.JPEG or class folders)")
    p.add_argument("--count", type=int, default=8192, help="train images (--images replicated) (default: 8192)")
    p.add_argument("--short-side", type=int, default=None, help="convert with --short-side (default: lossless)")
    p.add_argument("--arch", default="resnet50", help="torchvision model (default: resnet50)")
    p.add_argument("--batch-size", type=int, default=256, help="default: 256")
    p.add_argument("--image-size", type=int, default=224, help="default: 224")
    p.add_argument("--steps", type=int, default=20, help="timed steps per feed, after 3 warm-up steps (default: 20)")
    p.add_argument("--workers", type=int, default=default_workers(), help="loader workers (default: all cores)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu, to exercise the code without a GPU")
    p.add_argument("--skip-resume", action="store_true", help="leave out the kill/resume and rank checks")
    p.add_argument("--resume-shares", default="0,0.5,auto",
                   help="the --gpu-share values the resume check runs with (default: 0,0.5,auto)")
    p.add_argument("--feeds", type=feed_list, default=tuple(FEEDS),
                   help=f"comma-separated feeds to train from, of {','.join(FEEDS)} (default: all)")
    p.add_argument("--stages", action="store_true", help="print each device-path stage's time per batch")
    p.add_argument("--hybrid-share", type=share_value, default="auto",
                   help="the hybrid feed's gpu_share: 0 to 1, or auto (default: auto)")
    p.add_argument("--sync-debug", choices=("error", "warn", "off"), default="error",
                   help="what a host wait in a feed's timed steps does on CUDA (default: error)")
    p.add_argument("--one-feed", choices=tuple(FEEDS), default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one_feed:
        return one_feed(args)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    tmp = tempfile.TemporaryDirectory(prefix="gpu-check-")
    db = args.db
    if db is None:
        src = source_tree(args.images, Path(tmp.name) / "src", args.count)
        db = Path(tmp.name) / "db"
        convert(src, db, ConvertOptions(progress=False, short_side=args.short_side))
    print(f"{device_name(device)}, {args.workers} loader workers, torch "
          f"{torch.__version__}, CUDA {torch.version.cuda}, nvImageCodec "
          f"{'installed' if nvcodec.AVAILABLE else 'absent'} with {nvjpeg_text()}; {args.arch}, batch "
          f"{args.batch_size}, {args.image_size}px, {'bf16 channels_last' if cuda else 'fp32'}", flush=True)
    ds = LmdbImageNet(db, "train", decoder=RandomResizedCropDecoder(args.image_size, backend="auto"))
    ok = True
    print(f"1. decode micro-benchmark: GPU decode + RandomResizedCrop + flip, one batch of {args.batch_size}")
    decode = decode_benchmark(ds, args.batch_size, device)
    for name, row in decode.items():
        if "error" in row:
            print(f"  {name:<34} not available here ({row['error']})")
            continue
        edges = max(row[k] for k in ("top row", "bottom row", "left column", "right column"))
        print(f"  {name:<34} {row['images_per_s']:9.0f} images/s   {'regions' if row['regions'] else 'whole images'}"
              f"   to OpenCV {row['fallbacks']}   error vs CPU fused: mean {row['mean']:.2f}, worst edge "
              f"{edges:.2f} levels", flush=True)
        ok &= row["mean"] <= 1.0 and edges <= 3.0
    print("2. hybrid loader through CudaPrefetcher against the CPU-only loader")
    ok &= hybrid_against_cpu(db, device, min(args.batch_size, 64), args.image_size, min(args.workers, 4))
    print("3. the device path's host cost per batch (every row on the device)")
    cost = device_path_cost(build_loader(ds, args.batch_size, workers=args.workers, gpu_share=1.0, device=device))
    print(f"  {cost['torch_ops']} torch operations, {cost['host_ms']:.1f} ms of host time submitting, "
          f"{cost['cuda_runtime_calls']:.0f} CUDA runtime calls, {cost['pageable_copies']:.0f} pageable copies",
          flush=True)
    if args.stages:
        clock = "CUDA events" if cuda else "wall time"
        print(f"  per batch ({clock}): " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in cost["stages"].items()))
    print(f"4. training feed ({len(ds)} records, each feed in a fresh process"
          f"{', steady state under sync debug mode error' if cuda else ''})")
    feeds = feeds_in_fresh_processes(db, args)
    for row in feeds:
        if "error" in row:
            print(f"  {row['feed']:<36} FAILED: {row['error']}", flush=True)
            ok = False
            continue
        share = f"   GPU share {row['gpu_share']:.2f}" if row["gpu_share"] is not None else ""
        bound = f"{row['of_bound']:5.2f} of the bound" if row["of_bound"] is not None else "(no bound measured)"
        memory = f"   peak device memory {row['peak_bytes'] / 2**30:.2f} GiB" if row.get("peak_bytes") else ""
        print(f"  {row['feed']:<36} {row['images_per_s']:8.0f} images/s   {bound}   "
              f"data wait {row['data_wait']:4.0%}{share}{memory}", flush=True)
    if not args.skip_resume:
        print("5. exact resume: tools/train.py stopped after 3 steps, resumed")
        for share in args.resume_shares.split(","):
            ok &= resume_check(db, device, Path(tmp.name) / f"resume-{share}", "resnet18" if cuda else args.arch,
                               min(args.batch_size, 64), args.image_size, min(args.workers, 4), share)
        print("6. ranks")
        ok &= ranks_check(db, Path(tmp.name) / "ranks", args.image_size)
    print("\n".join(summary(cuda, decode, cost, feeds)))
    tmp.cleanup()
    print("gpu check: " + ("every check holds" if ok else "SOME CHECKS FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
