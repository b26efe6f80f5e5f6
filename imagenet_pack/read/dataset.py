"""``LmdbImageNet``: the map-style dataset over a converted database."""
from __future__ import annotations

import bisect
import operator
import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..contract.format import Record
from ..contract.shardfiles import done_with_shards, shard_file, use_shards
from .decoders import Decoder, FusedDecoder, resolve_decoder
from .reader import Shard, load_split, read_paths
from .staged import StagedRecords


class LmdbImageNet(Dataset):
    """ImageNet read from an ``imagenet-pack`` database; a drop-in for ``torchvision.datasets.ImageFolder``.

    Expected layout (written by ``imagenet-pack convert``)::

        root/
          train/            one LMDB environment (data.mdb) ...
          val/              ... or shard-000-of-004/ ... shard-003-of-004/ folders
          convert-report.jsonl

    Metadata is read once in ``__init__`` and the environment closed again; each process (every DataLoader
    worker, fork or spawn) opens its own read-only environment on first access. So the dataset pickles,
    several instances can share a path, and workers never run out of LMDB reader slots.

    Args:
        root: the database directory given to ``imagenet-pack convert``.
        split: ``"train"`` or ``"val"`` (any split present in ``root``).
        transform: applied to the decoded sample (a ``PIL.Image`` with the default decoder).
        target_transform: applied to the target (the class index).
        decoder: ``"pil"`` (default: RGB ``PIL.Image``), ``"tensor"`` (uint8 3xHxW RGB tensor), or a decoder
            object such as :class:`imagenet_pack.RandomResizedCropDecoder` (fused decode + crop, uint8).

    Attributes:
        classes (list[tuple[str, ...]]): class names per class index, as ``torchvision.datasets.ImageNet``.
        class_to_idx (dict[str, int]): every class name to its index.
        wnids (list[str]): WordNet ids per class index (sorted, torchvision's order).
        wnid_to_idx (dict[str, int]): wnid to class index.
        targets (numpy.ndarray): class index of every sample (int16 or int32, read-only), read from the
            database on first access and kept by this instance (a pickled dataset carries none of it, and
            workers never read it: their memory does not grow with the database).
        sizes (numpy.ndarray): (N, 2) height and width of every stored image, likewise (the source's, unless
            the database was stored resized: ``--short-side``, ``--max-side``).

    Raises:
        FormatError: the database is missing, incomplete, or of an unsupported format version; (on access)
            it was rewritten or replaced since this dataset was opened (it is never read as a mix of both).
        CorruptRecordError: (on access) a record fails its checksum.
    """

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None,
                 target_transform: Callable | None = None, *, decoder: str | Decoder = "pil") -> None:
        root = Path(root).absolute()  # resolved once: a later chdir must not move the database
        info = load_split(root, split)
        self.root = root
        self.split = split
        self.transform = transform
        self.target_transform = target_transform
        self.decoder = resolve_decoder(decoder)
        # every sample's (C, H, W) when samples can be decoded straight into a batch tensor (a fused decoder,
        # no transform): the loader's shared-memory batches and the GPU decode mode build on it
        self.batch_shape: tuple[int, int, int] | None = \
            self.decoder.output_shape if transform is None and isinstance(self.decoder, FusedDecoder) else None
        self.wnids = info.wnids
        self.wnid_to_idx = {wnid: i for i, wnid in enumerate(self.wnids)}
        self.classes = info.classes
        self.class_to_idx = {name: i for i, names in enumerate(self.classes) for name in names}
        self._shards = info.shards
        self._starts = [s.start for s in info.shards]
        self._length = len(info)
        self._kept: dict[str, Any] = {}  # targets, sizes, paths: read on first access
        self._hold_shards()

    def _hold_shards(self) -> None:
        """Keep this process's readers of the shards open while this dataset lives, and no longer."""
        paths = [os.fspath(shard.path) for shard in self._shards]
        use_shards(paths)
        weakref.finalize(self, done_with_shards, paths)

    def __len__(self) -> int:
        return self._length

    def _whole(self, name: str, read: Callable[[Shard], Any]) -> Any:
        """``name`` of every record, read on first access and kept; the files are checked to be the ones
        opened on every access, so a kept array never stands for a database replaced since."""
        for shard in self._shards:
            shard_file(shard.path, shard.identity)
        if name not in self._kept:
            parts = [read(shard) for shard in self._shards]
            if name == "paths":
                self._kept[name] = [p for part in parts for p in part]
            else:
                whole = parts[0] if len(parts) == 1 else np.concatenate(parts)
                whole.flags.writeable = False
                self._kept[name] = whole
        return self._kept[name]

    @property
    def targets(self) -> np.ndarray:
        return self._whole("targets", Shard.targets)

    @property
    def sizes(self) -> np.ndarray:
        return self._whole("sizes", Shard.sizes)

    @property
    def paths(self) -> list[str]:
        """Source path (relative to the converted input) of every sample; read on first access, then kept."""
        return self._whole("paths", lambda shard: read_paths(shard.path, shard.identity))

    def __getstate__(self) -> dict:
        # no per-record array travels to a worker: workers read what they need from the file
        return {**self.__dict__, "_kept": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._hold_shards()  # a spawned worker's own readers

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[Any, Any]:
        """Sample and target at ``index``; ``(index, epoch)`` pairs (from the loader's sampler) seed crops."""
        return self._sample(index)

    def decode_into(self, indices: Sequence[int | tuple[int, int]], images: Any) -> list[int]:
        """Decode the samples at ``indices`` into the rows of ``images``, an (N, C, H, W) tensor (for a
        :attr:`batch_shape` only: the loader's shared-memory batches); returns their targets."""
        return [self._sample(at, out)[1] for at, out in zip(indices, images)]

    def stage_records(self, indices: Sequence[int | tuple[int, int]], staged: StagedRecords, images: Any
                      ) -> list[int]:
        """Stage the samples at ``indices`` for a decoder elsewhere (:mod:`.staged`): each record read and
        checked, its bytes copied into ``staged.data``, its plan drawn as the fused decoder would (same law, same
        seeds) into ``staged.table``; a record that does not fit is decoded here into its row of ``images``
        instead. Returns the targets. For a :attr:`batch_shape` only."""
        return self._stage(indices, staged, images)[0]

    def stage_and_decode(self, indices: Sequence[int | tuple[int, int]], staged: StagedRecords, images: Any,
                         wanted: Callable[[], int]) -> tuple[list[int], int]:
        """:meth:`stage_records`, then decode rows from the first on into ``images`` (from the records as read:
        the fused decoder's samples, as :meth:`decode_into` gives), while fewer than ``wanted()`` (asked before
        each row) are done. Returns the targets and how many rows are decoded."""
        targets, read = self._stage(indices, staged, images)
        decoder = self.decoder
        assert isinstance(decoder, FusedDecoder)  # as _stage checked
        done = 0
        while done < len(read) and done < wanted():
            if staged.row(done)["length"]:  # else decoded when staged, for want of room
                record, index, epoch, where = read[done]
                decoder(record, index, epoch, where, out=images[done])
            done += 1
        return targets, done

    def _stage(self, indices: Sequence[int | tuple[int, int]], staged: StagedRecords, images: Any
               ) -> tuple[list[int], list[tuple[Record, int, int | None, str]]]:
        decoder = self.decoder
        if not isinstance(decoder, FusedDecoder):
            raise TypeError("staging records needs a fused decoder")
        law = decoder.law
        free, targets, read = 0, [], []
        for row, (at, out) in enumerate(zip(indices, images)):
            index, epoch = at if isinstance(at, tuple) else (at, None)
            index = self._checked_index(index)
            record, where = self._read(index)
            plan = law.plan(record.height, record.width, index, epoch)
            size = len(record.image)
            if free + size > len(staged.data):  # no room: this one is decoded here, into its batch row
                decoder(record, index, epoch, where, out=out)
                size = 0
            else:
                staged.data[free:free + size] = np.frombuffer(record.image, np.uint8)
            staged.put(row, free, size, record, plan)
            free += size
            targets.append(self._target(record))
            read.append((record, index, epoch, where))
        staged.rows = len(indices)
        return targets, read

    def _checked_index(self, index: int) -> int:
        index = operator.index(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return index

    def _sample(self, index: int | tuple[int, int], out: Any = None) -> tuple[Any, Any]:
        epoch = None
        if isinstance(index, tuple):
            index, epoch = index
        index = self._checked_index(index)
        record, where = self._read(index)
        if out is None:
            sample = self.decoder(record, index, epoch, where)
        elif isinstance(self.decoder, FusedDecoder):
            sample = self.decoder(record, index, epoch, where, out=out)
        else:
            raise TypeError("decoding into a batch row needs a fused decoder")
        if self.transform is not None:
            sample = self.transform(sample)
        return sample, self._target(record)

    def _target(self, record: Record) -> Any:
        """The target of ``record`` (checked against the metadata in :meth:`_read`), as the user asked for it."""
        return record.target if self.target_transform is None else self.target_transform(record.target)

    def read_record(self, index: int) -> Record:
        """The checked record at ``index`` (encoded image bytes, target, stored size), without decoding;
        negative indices count from the end, as for ``dataset[index]``."""
        return self._read(self._checked_index(index))[0]

    def _read(self, index: int) -> tuple[Record, str]:
        shard = self._shards[bisect.bisect_right(self._starts, index) - 1]
        local = index - shard.start
        where = f"{shard.path} record {local}"
        return shard.read(local, where), where

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, samples={len(self)}, "
                f"classes={len(self.wnids)}, shards={len(self._shards)})")


def in_place_shape(dataset: Any) -> tuple[int, int, int] | None:
    """The (C, H, W) every sample of ``dataset`` has when it decodes straight into a batch tensor (an
    :class:`LmdbImageNet` with a fused decoder and no transform: the loader's shared-memory batches and the
    device path build on it); None for any other dataset (its samples are collated)."""
    return dataset.batch_shape if isinstance(dataset, LmdbImageNet) else None
