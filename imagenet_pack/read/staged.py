"""Records staged for a decoder in another process or on a device: the encoded bytes of some samples and the
plan of each, as two arrays, no Python object per record.

A DataLoader worker fills them (in shared memory, :class:`imagenet_pack.loader.ring.BatchRing`) for the rows
of a batch the device decodes: it reads and checks each record and draws its plan exactly as the fused CPU
decoder would (same law, same seeds), so the process that decodes never touches the database. ``data`` holds
the records' bytes back to back; ``table`` one int64 row per sample, its columns named below. A row whose
bytes do not fit what is left of ``data`` is decoded by the worker itself into its batch row instead
(``length`` 0): a batch of unusually large files costs CPU time, never more shared memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: this module stays torch-free
    from ..contract.format import Record
    from .crops import Plan

COLUMNS = ("offset", "length", "target", "height", "width", "box_top", "box_left", "box_height", "box_width",
           "resize_height", "resize_width", "window_top", "window_left", "flip")
ROW = np.dtype([(name, np.int64) for name in COLUMNS])  # one staged row, its fields by name
# room per staged row, in the workers' shared memory and in the pinned buffers: ImageNet's records
# average ~110 KB; a record that does not fit what is left of its batch's room is decoded by the worker instead
BYTES_PER_ROW = 160 << 10


@dataclass
class StagedRecords:
    """``table[:rows]`` describes ``rows`` samples (one int64 row each, its fields named by :data:`ROW`: read
    them through :attr:`fields`, write them with :meth:`put`); a sample's bytes are
    ``data[offset:offset + length]``, none (``length`` 0) for one decoded where it was staged."""

    data: np.ndarray  # uint8
    table: np.ndarray  # int64 (capacity, len(COLUMNS)): shared memory's layout
    rows: int = 0

    @classmethod
    def allocate(cls, rows: int) -> StagedRecords:
        """Private (not shared) arrays for ``rows`` samples: for a decoder fed from this process."""
        return cls(np.empty(rows * BYTES_PER_ROW, np.uint8), np.zeros((rows, len(COLUMNS)), np.int64))

    @property
    def fields(self) -> np.ndarray:
        """The staged rows as a structured array (a view: ``fields["box_top"]`` is every row's box top)."""
        return self.table[:self.rows].view(ROW)[:, 0]

    def put(self, row: int, offset: int, length: int, record: Record, plan: Plan) -> None:
        """Row ``row``: the record's bytes at ``offset`` (``length`` 0: none), its target and stored size, and
        the plan drawn for it."""
        top, left, height, width = plan.box
        self.table[row] = (offset, length, record.target, record.height, record.width, top, left, height, width,
                           *plan.resize, *plan.offset, plan.flip)

    def row(self, row: int) -> np.void:
        """Sample ``row``'s fields by name (a view)."""
        return self.table[row].view(ROW)[0]

    def record(self, row: int) -> memoryview:
        """The encoded bytes of sample ``row`` (a view: no copy)."""
        fields = self.row(row)
        return memoryview(self.data.data)[fields["offset"]:fields["offset"] + fields["length"]]

    def box(self, row: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of sample ``row``'s crop box in its stored image."""
        fields = self.row(row)
        return (int(fields["box_top"]), int(fields["box_left"]), int(fields["box_height"]),
                int(fields["box_width"]))

    def size(self, row: int) -> tuple[int, int]:
        """(height, width) of sample ``row``'s stored image."""
        fields = self.row(row)
        return int(fields["height"]), int(fields["width"])

    @property
    def on_device(self) -> np.ndarray:
        """The rows whose bytes are staged (the others were decoded by the worker)."""
        return np.flatnonzero(self.fields["length"] > 0)
