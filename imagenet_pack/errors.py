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


class CorruptRecordError(FormatError):
    """A record's bytes do not match its checksum, or it cannot be decoded as a record."""


class DecodeError(ImagenetPackError):
    """A stored image could not be decoded."""


class OutputExistsError(ImagenetPackError):
    """The output already holds a complete database (or different work) and --overwrite was not given."""


class DecoderUnavailableError(ImagenetPackError):
    """A decoder that was asked for is not installed or was not built here."""
