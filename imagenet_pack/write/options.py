"""How to convert: the options of a conversion, and what of them identifies the database it makes."""
from __future__ import annotations

from dataclasses import dataclass

from ..contract.codec import DEFAULT_QUALITY
from ..contract.format import MAX_SHARDS
from ..sources.folders import SPLITS
from ..sources.items import SplitSource
from .prepare import PrepareOptions


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert. ``workers=None`` uses every core; ``short_side`` (torchvision's ``Resize``) or
    ``max_side`` (FFCV's) store images resized and re-encoded at ``quality``."""

    splits: tuple[str, ...] = SPLITS
    require_splits: bool = False  # every one of ``splits`` must be found (the user named them), else an error
    workers: int | None = None
    shards: int = 1
    overwrite: bool = False
    skip_bad: bool = False
    keep_damaged: bool = False
    max_side: int | None = None
    short_side: int | None = None
    quality: int = DEFAULT_QUALITY
    layout: str = "auto"
    progress: bool = True
    initial_map_size: int | None = None  # None: estimated from the source size; the map grows when full
    batch_bytes: int = 64 << 20  # a commit (a point a killed run resumes from) every this many bytes of images
    only_shards: tuple[int, ...] | None = None  # write only these of the ``shards`` (several hosts, one DST)

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ValueError(f"--shards: at most {MAX_SHARDS} shards per split, got {self.shards}")
        if self.only_shards is not None and not all(0 <= s < self.shards for s in self.only_shards):
            raise ValueError(f"--only-shards {','.join(map(str, self.only_shards))}: shards are numbered "
                             f"0..{self.shards - 1} with --shards {self.shards}")
        if self.max_side and self.short_side:
            raise ValueError("choose one of max_side (the longer side) and short_side (the shorter side)")

    @property
    def selected(self) -> tuple[int, ...]:
        """The shards this run writes."""
        return tuple(sorted(set(self.only_shards))) if self.only_shards is not None else tuple(range(self.shards))

    @property
    def prepare(self) -> PrepareOptions:
        return PrepareOptions(self.max_side, self.short_side, self.quality, self.keep_damaged)

    def fingerprint(self, source: SplitSource) -> str:
        """Identifies the input and the options that change what is stored: resuming over others is refused."""
        return (f"{source.fingerprint()}|shards={self.shards}|max_side={self.max_side}|"
                f"short_side={self.short_side}|quality={self.quality}|keep_damaged={self.keep_damaged}")
