"""The package's exceptions: one base class, a few meaningful kinds.

Every message names the file, key or path at fault, says what is wrong and what to do about it. The CLI turns
any of these into a one-line message and a non-zero exit status.
"""
from __future__ import annotations


class ImagenetPackError(Exception):
    """Base class of every error this package raises on bad input."""


class LayoutError(ImagenetPackError):
    """The input tree or archive is not a layout the converter can read."""


class FormatError(ImagenetPackError):
    """A database is missing, incomplete, of an unknown format version, or malformed."""


class IncompleteShardError(FormatError):
    """A shard's conversion has not finished (no length key). ``remedy`` ends its messages."""

    remedy = ("rerun the same `imagenet-pack convert` command to resume it, adding --skip-bad if it stopped on "
              "files it could not store (its convert-report.jsonl lists them) or after fixing them")


class NoTablesError(FormatError):
    """An LMDB environment holds no named databases: none of ours, or one whose first commit never happened
    (a writer starting a new shard creates its tables then)."""


class DamagedError(FormatError):
    """A database's bytes are damaged: a page, its metadata or a record fails its checks. ``remedy`` is what
    every such message ends with."""

    remedy = ("the database is damaged: rerun the convert command that made it with --repair, which converts "
              "the damaged shards again from SRC")


class CorruptRecordError(DamagedError):
    """A record's bytes do not match its checksum, or it cannot be decoded as a record."""


class DecodeError(ImagenetPackError):
    """A stored image could not be decoded."""


class OutputExistsError(ImagenetPackError):
    """The output already holds a database of other input or options (or files imagenet-pack did not write),
    and --overwrite was not given."""


class BusyError(ImagenetPackError):
    """Another conversion holds the output directory."""


class UnsafeOutputError(ImagenetPackError):
    """A path imagenet-pack would create or write in DST is a symbolic link, a special file, or a file it
    cannot prove its own: it is never written through."""


class DecoderUnavailableError(ImagenetPackError):
    """A decoder that was asked for is not installed here."""


class MissingExtraError(ImagenetPackError):
    """An optional part asked for needs a package not installed here (an extra: ``pip install -e '.[plot]'``)."""


class DestinationError(ImagenetPackError):
    """DST cannot take the databases: not a folder, not creatable or writable by this user, or overlapping SRC."""


class InterruptedRunError(ImagenetPackError):
    """A conversion stopped part way (a worker killed, a file changed under it, a commit that failed): what was
    committed is kept, and rerunning the same command resumes from it."""


class DiskFullError(InterruptedRunError):
    """The disk holding DST filled up: free space, then rerun the same command to resume."""


class SharedMemoryError(ImagenetPackError):
    """The loader's shared-memory batches do not fit ``/dev/shm``: fewer workers, a smaller batch or
    ``prefetch_factor``, or a larger ``/dev/shm``."""


class BenchError(ImagenetPackError):
    """What ``imagenet-pack bench`` was asked cannot be measured as asked (its options, inputs or outputs)."""
