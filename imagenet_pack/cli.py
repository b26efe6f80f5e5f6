"""``imagenet-pack``: convert, info, verify, bench, demo. Thin: each verb calls one library function."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import ImagenetPackError

_VERBS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _verb(name: str):
    def register(fn):
        _VERBS[name] = fn
        return fn
    return register


def _splits(text: str) -> tuple[str, ...]:
    splits = tuple(s for s in text.split(",") if s)
    if not splits:
        raise argparse.ArgumentTypeError("give at least one split, e.g. train,val")
    return splits


def _shard_list(text: str) -> tuple[int, ...]:
    try:
        shards = tuple(int(s) for s in text.split(",") if s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected shard numbers like 0,1 or 3, got {text!r}") from None
    if not shards or min(shards) < 0:
        raise argparse.ArgumentTypeError(f"expected shard numbers like 0,1 or 3, got {text!r}")
    return shards


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be 1..100, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .sources.detect import LAYOUTS
    parser = argparse.ArgumentParser(prog="imagenet-pack", description="Pack ILSVRC2012 into LMDB for PyTorch.")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("convert", help="pack an ImageNet tree or archives into LMDB databases",
                       description="Read SRC (class folders, flat val + devkit, the official tars, or Kaggle's "
                       "layout) and write DST/<split>/. Resumes an interrupted run of the same command.")
    p.add_argument("src", type=Path, help="the ImageNet input: a folder holding train/ and val/, or archives")
    p.add_argument("dst", type=Path, help="output directory for the databases")
    p.add_argument("--splits", type=_splits, default=("train", "val"), help="comma-separated splits (default: train,val)")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="input layout (default: detect it)")
    p.add_argument("--workers", type=_positive, default=None, help="reader/validator processes (default: all cores)")
    p.add_argument("--shards", type=_positive, default=1, help="LMDB environments per split (default: 1)")
    p.add_argument("--only-shards", type=_shard_list, default=None, metavar="S,S,...",
                   help="write only these of the --shards (0-based), e.g. one set per host on shared storage; "
                        "the database opens once every shard is written, and equals a one-host conversion")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a database of other input or options in DST (only files imagenet-pack wrote "
                        "are removed; SRC and DST must not overlap)")
    p.add_argument("--skip-bad", action="store_true",
                   help="finish the database even when some images could not be read (they are listed in the report)")
    p.add_argument("--max-side", type=_positive, default=None,
                   help="downscale images whose longer side exceeds this (default: store original bytes)")
    p.add_argument("--quality", type=_quality, default=90, help="JPEG quality for --max-side re-encoding (default: 90)")
    p.add_argument("--commit-mb", type=_positive, default=64,
                   help="commit (and make resumable) every this many MB of images (default: 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("info", help="describe a converted database")
    p.add_argument("root", type=Path)

    p = sub.add_parser("verify", help="check every record of a database")
    p.add_argument("root", type=Path)
    p.add_argument("--decode", action="store_true", help="also decode every image")
    p.add_argument("--source", type=Path, default=None, help="also compare every record with this source input")

    p = sub.add_parser("bench", help="time the loaders on a database, side by side with torchvision's ImageFolder",
                       description="Time ImageFolder baselines (with --images), the drop-in and the fused decoders "
                       "on DB, interleaved on the same cores, as ratios to the baseline of the same kind (train, "
                       "val); also the time to the first batch from process start and worker memory.")
    p.add_argument("root", type=Path, help="a database written by `imagenet-pack convert`")
    p.add_argument("--images", type=Path, default=None,
                   help="the JPEG tree DB was converted from (holding train/ and val/, or one class-folder tree): "
                        "adds the ImageFolder baselines")
    p.add_argument("--workers", type=_positive, default=None, help="loader workers (default: all cores)")
    p.add_argument("--epochs", type=_positive, default=3, help="timed rounds after a warm-up (default: 3)")
    p.add_argument("--batch-size", type=_positive, default=32, help="images per batch (default: 32)")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    p.add_argument("--plot", type=Path, default=None, help="draw the ratios as a bar chart (PNG; needs matplotlib)")
    p.add_argument("--device", default=None,
                   help="also train --arch from each feed (CPU fused, GPU decode, hybrid, synthetic bound) on this "
                        "device (default: cuda when a GPU is present, else skipped; 'none' skips it)")
    p.add_argument("--arch", default="resnet50", help="the model of the training-feed table (default: resnet50)")
    p.add_argument("--feed-batch-size", type=_positive, default=256, help="its batch size (default: 256)")
    p.add_argument("--feed-steps", type=_positive, default=20, help="its timed steps per feed (default: 20)")

    p = sub.add_parser("demo", help="generate a small ImageNet-shaped sample, convert it, read it back, time it")
    p.add_argument("--dir", type=Path, default=None, help="keep the sample and database here (default: a temp dir)")
    p.add_argument("--classes", type=_positive, default=10)
    p.add_argument("--per-class", type=_positive, default=30, help="train images per class (val gets a third)")
    p.add_argument("--workers", type=_positive, default=None, help="DataLoader and converter workers (default: all cores)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as escapes, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "only_shards", None) and max(args.only_shards) >= args.shards:
        parser.error(f"--only-shards {','.join(map(str, args.only_shards))}: shards are numbered 0.."
                     f"{args.shards - 1} with --shards {args.shards}")
    logging.basicConfig(level=logging.WARNING, format="imagenet-pack: warning: %(message)s")
    try:
        return _VERBS[args.verb](args)
    except ImagenetPackError as exc:
        print(f"imagenet-pack: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imagenet-pack: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


@_verb("convert")
def _convert(args: argparse.Namespace) -> int:
    from .convert import ConvertOptions, convert
    options = ConvertOptions(splits=args.splits, workers=args.workers, shards=args.shards, overwrite=args.overwrite,
                             skip_bad=args.skip_bad, max_side=args.max_side, quality=args.quality,
                             layout=args.layout, progress=not args.no_progress,
                             batch_bytes=args.commit_mb << 20, only_shards=args.only_shards)
    report = convert(args.src, args.dst, options)
    for note in report.notes:
        print(note)
    print(f"{'split':<6} {'found':>8} {'stored':>8} {'fixed':>6} {'skipped':>8} {'ignored':>8} "
          f"{'img/s':>7} {'MB/s':>7} {'db/src':>7}")
    for r in report.splits:
        rate = "-" if r.already_complete else f"{r.stored / max(r.seconds, 1e-9):.0f}"
        mbs = "-" if r.already_complete else f"{r.source_bytes / 1e6 / max(r.seconds, 1e-9):.1f}"
        print(f"{r.split:<6} {r.found:>8} {r.stored:>8} {len(r.fixed):>6} {len(r.skipped):>8} {len(r.ignored):>8} "
              f"{rate:>7} {mbs:>7} {r.storage_ratio:>7.3f}")
        for path, reason in r.skipped:
            print(f"  skipped {path}: {reason}")
        for path, reason in r.fixed[:20]:
            print(f"  fixed   {path}: {reason}")
    print(f"report: {report.report_path} (every fixed, skipped and ignored file, JSON lines)")
    if not report.ok:
        bad = sum(len(r.skipped) for r in report.splits)
        print(f"imagenet-pack: error: {bad} image(s) could not be read (listed above); the database is not "
              "finished. Fix them and rerun the same command (they are read again), or rerun with --skip-bad to "
              "accept the loss (removing files changes the input: that needs --overwrite).", file=sys.stderr)
        return 1
    return 0


@_verb("info")
def _info(args: argparse.Namespace) -> int:
    from .format import FORMAT_NAME, FORMAT_VERSION
    from .errors import FormatError
    from .read.reader import finished_shards, list_splits, load_split
    splits = list_splits(args.root)
    if not splits:
        raise ImagenetPackError(f"{args.root}: no database found")
    status = 0
    for split in splits:
        try:
            info = load_split(args.root, split)
        except FormatError as exc:  # e.g. shards not written yet: say which are finished
            print(f"{split}: {exc}")
            for shard, meta in finished_shards(args.root / split):
                print(f"  {shard.path.name}: finished, {meta.count} records, created {meta.created}")
            status = 1
            continue
        meta = info.metas[0]
        size = sum((s.path / "data.mdb").stat().st_size for s in info.shards)
        print(f"{split}: {len(info)} records, {len(info.wnids)} classes, {len(info.shards)} shard(s), "
              f"{size / 1e6:.1f} MB, format {FORMAT_NAME} v{FORMAT_VERSION}, created {meta.created}")
        print(f"  source: {meta.source}; images: "
              + (f"longer side <= {meta.max_side}, quality {meta.quality}" if meta.max_side else "original bytes")
              + f"; fixed on conversion: {sum(len(m.fixed) for m in info.metas)}")
        print(f"  classes: {info.wnids[0]} ({info.classes[0][0]}) ... {info.wnids[-1]} ({info.classes[-1][0]})")
    return status


@_verb("verify")
def _verify(args: argparse.Namespace) -> int:
    from .verify import verify
    report = verify(args.root, decode=args.decode, source=args.source, progress=sys.stderr.isatty())
    for problem in report.problems:
        print(f"BAD {problem}")
    if report.ok:
        print(f"ok: {report.checked} records checked")
        return 0
    print(f"imagenet-pack: error: {len(report.problems)} problem(s) in {report.checked} records", file=sys.stderr)
    return 1


@_verb("bench")
def _bench(args: argparse.Namespace) -> int:
    from .bench import BenchOptions, format_table, plot, run_bench, write_json
    if args.images is not None and not args.images.is_dir():
        raise ImagenetPackError(f"{args.images}: no such folder (--images)")
    device = args.device
    if device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else None
    report = run_bench(args.root, BenchOptions(
        images=args.images, workers=args.workers, epochs=args.epochs, batch_size=args.batch_size,
        feed_device=None if device == "none" else device, feed_arch=args.arch, feed_batch_size=args.feed_batch_size,
        feed_steps=args.feed_steps))
    print(format_table(report))
    if args.json:
        write_json(report, args.json)
        print(f"results: {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"chart: {args.plot}")
    return 0


@_verb("demo")
def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    run_demo(args.dir, classes=args.classes, per_class=args.per_class, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
