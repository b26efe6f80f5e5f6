"""What a conversion did, told honestly: per-split counts, every fixed, skipped and ignored file, audit warnings.

:func:`write_report` writes ``DST/convert-report.jsonl`` (one JSON object per file that was not stored as it
was, and per class whose count differs from ILSVRC2012's), :func:`audit` compares a full ILSVRC2012 split
with its canonical counts (one warning line on the terminal).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..contract.format import ShardMeta
from ..sources.items import SplitSource
from .ownership import write_file

CANONICAL_COUNTS = {"train": 1_281_167, "val": 50_000}
CANONICAL_VAL_PER_CLASS = 50
CANONICAL_TRAIN_PER_CLASS = (732, 1300)  # the fewest and the most train images of an ILSVRC2012 class


@dataclass
class SplitReport:
    """One split's outcome."""

    split: str
    description: str = ""
    found: int = 0
    stored: int = 0
    converted: int = 0  # items this run read and stored or skipped (not those an earlier run committed)
    fixed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    source_bytes: int = 0
    db_bytes: int = 0
    seconds: float = 0.0
    complete: bool = False
    already_complete: bool = False
    warnings: list[str] = field(default_factory=list)
    class_counts: list[tuple[str, int, int | str]] = field(default_factory=list)  # wnid, images, ILSVRC2012's

    @property
    def storage_ratio(self) -> float:
        return self.db_bytes / self.source_bytes if self.source_bytes else 0.0

    @property
    def rate(self) -> float:
        """Items this run converted per second (0 for a split kept as it was)."""
        return self.converted / self.seconds if self.seconds and self.converted else 0.0


@dataclass
class ConvertReport:
    """Every split's :class:`SplitReport`, where the JSONL report went, and notes on what was found."""

    splits: list[SplitReport]
    report_path: Path
    notes: list[str] = field(default_factory=list)
    noop: bool = False  # the database was complete already for this input and these options

    @property
    def ok(self) -> bool:
        return all(s.complete for s in self.splits)

    def table(self) -> list[str]:
        """The run in words: a row per split, each skipped file and the first fixed ones, where the report is."""
        lines = [f"{'split':<6} {'found':>8} {'stored':>8} {'fixed':>6} {'skipped':>8} {'ignored':>8} "
                 f"{'this run':>9} {'img/s':>7} {'db/src':>7}"]
        for r in self.splits:
            rate = f"{r.rate:.0f}" if r.rate else "-"
            ratio = f"{r.storage_ratio:.3f}" if r.storage_ratio else "-"
            lines.append(f"{r.split:<6} {r.found:>8} {r.stored:>8} {len(r.fixed):>6} {len(r.skipped):>8} "
                         f"{len(r.ignored):>8} {r.converted:>9} {rate:>7} {ratio:>7}")
            lines += [f"  skipped {path}: {reason}" for path, reason in r.skipped]
            lines += [f"  fixed   {path}: {reason}" for path, reason in r.fixed[:20]]
        return lines + [f"report: {self.report_path} (every fixed, skipped and ignored file, JSON lines)"]

    def unfinished(self) -> str:
        """Why the database is not finished, and the two ways on."""
        bad = sum(len(r.skipped) for r in self.splits)
        return (f"{bad} image(s) could not be stored (listed above; everything else is converted); the database is "
                "not finished. Rerun with --skip-bad to finish it without them (nothing is read again), or fix "
                "them and rerun the same command (a changed file is read again, and every file after it).")


def audit(source: SplitSource) -> tuple[list[str], list[tuple[str, int, int | str]]]:
    """Compare a full ILSVRC2012 split (1000 classes) with the canonical counts: (one warning line; every class
    whose count differs, as (wnid, images, ILSVRC2012's), for the report). A class's train count is known from
    the devkit; without one, a count outside ILSVRC2012's range per class is the difference."""
    if len(source.wnids) != 1000 or source.split not in CANONICAL_COUNTS:
        return [], []
    counts = [0] * len(source.wnids)
    for item in source.items:
        counts[item.target] += 1
    per_class = source.expected_counts or (
        {w: CANONICAL_VAL_PER_CLASS for w in source.wnids} if source.split == "val" else None)
    low, high = CANONICAL_TRAIN_PER_CLASS
    differ: list[tuple[str, int, int | str]] = (
        [(w, c, per_class[w]) for w, c in zip(source.wnids, counts) if w in per_class and c != per_class[w]]
        if per_class else [(w, c, f"{low}..{high}") for w, c in zip(source.wnids, counts) if not low <= c <= high])
    expected = CANONICAL_COUNTS[source.split]
    if len(source.items) == expected and not differ:
        return [], []
    line = (f"{source.split}: {len(source.items)} images, ILSVRC2012 has {expected}" +
            (f"; {len(differ)} of its 1000 classes hold another count (each listed in the report)" if differ else ""))
    return [line], differ


def report_from_metas(source: SplitSource, metas: list[ShardMeta]) -> SplitReport:
    """The report of a split whose shards were complete already: what their metadata says."""
    report = SplitReport(source.split, source.description, complete=True, already_complete=True,
                         ignored=list(source.ignored))
    report.stored = sum(m.count for m in metas)
    report.fixed = [f for m in metas for f in m.fixed]
    report.skipped = [f for m in metas for f in m.skipped]
    report.found = len(source.items) + len(source.ignored)
    report.warnings, report.class_counts = audit(source)
    return report


def write_report(path: Path, reports: list[SplitReport]) -> None:
    """One JSON object per line: every fixed, skipped and ignored file (``path``, ``action``, ``reason``),
    and the audit's warnings (``action`` "warning"). Written to a new file renamed into place."""
    lines = []
    for r in reports:
        for action, entries in (("fixed", r.fixed), ("skipped", r.skipped), ("ignored", r.ignored)):
            for file, reason in entries:
                lines.append(json.dumps({"split": r.split, "path": file, "action": action, "reason": reason}))
        for warning in r.warnings:
            lines.append(json.dumps({"split": r.split, "action": "warning", "reason": warning}))
        for wnid, images, canonical in r.class_counts:
            lines.append(json.dumps({"split": r.split, "action": "count", "wnid": wnid, "images": images,
                                     "ilsvrc2012": canonical}))
    write_file(path, "".join(line + "\n" for line in lines).encode("utf-8"))
