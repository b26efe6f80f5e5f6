"""Records staged for a decoder in another process or on a device: the encoded bytes of some samples and the
plan of each, as two arrays, no Python object per record.

A DataLoader worker fills them (in shared memory, :class:`imagenet_pack.loader.ring.BatchRing`) for the rows
of a batch the device decodes: it reads and checks each record and draws its plan exactly as the fused CPU
decoder would (same law, same seeds), so the process that decodes never touches the database. ``data`` holds
the records' bytes back to back; ``table`` one int64 row per sample, its columns named below. A row whose
bytes do not fit what is left of ``data`` is decoded by the worker itself into its batch row instead
(``LENGTH`` 0): a batch of unusually large files costs CPU time, never more shared memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLUMNS = ("offset", "length", "target", "height", "width", "box_top", "box_left", "box_height", "box_width",
           "resize_height", "resize_width", "window_top", "window_left", "flip")
(OFFSET, LENGTH, TARGET, HEIGHT, WIDTH, BOX_TOP, BOX_LEFT, BOX_HEIGHT, BOX_WIDTH, RESIZE_HEIGHT, RESIZE_WIDTH,
 WINDOW_TOP, WINDOW_LEFT, FLIP) = range(len(COLUMNS))
# room per staged row, in the workers' shared memory and in the pinned staging buffers: ImageNet's records
# average ~110 KB; a record that does not fit what is left of its batch's room is decoded by the worker instead
BYTES_PER_ROW = 160 << 10


@dataclass
class StagedRecords:
    """``table[:rows]`` describes ``rows`` samples whose bytes are ``data[table[r, OFFSET]:...+LENGTH]``."""

    data: np.ndarray  # uint8
    table: np.ndarray  # int64 (capacity, len(COLUMNS))
    rows: int = 0

    @classmethod
    def allocate(cls, rows: int) -> StagedRecords:
        """Private (not shared) arrays for ``rows`` samples: for a decoder fed from this process."""
        return cls(np.empty(rows * BYTES_PER_ROW, np.uint8), np.zeros((rows, len(COLUMNS)), np.int64))

    def record(self, row: int) -> memoryview:
        """The encoded bytes of sample ``row`` (a view: no copy)."""
        offset, length = self.table[row, OFFSET], self.table[row, LENGTH]
        return memoryview(self.data.data)[offset:offset + length]

    @property
    def on_device(self) -> np.ndarray:
        """The rows whose bytes are staged (the others were decoded by the worker)."""
        return np.flatnonzero(self.table[:self.rows, LENGTH] > 0)
