"""The ILSVRC2012 devkit: class list, names and validation ground truth.

``data/meta.mat`` lists 1860 synsets in ILSVRC2012_ID order; the 1000 with ``num_children == 0`` are the
classes. ``data/ILSVRC2012_validation_ground_truth.txt`` gives one ILSVRC2012_ID per validation image in file
name order. ILSVRC2012_ID order is NOT sorted-wnid order: targets are positions in the sorted wnid list, as
torchvision assigns them, so every ID goes through meta.mat to its wnid first.
"""
from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LayoutError
from .items import BoundedReader, read_side_file

DEVKIT_ARCHIVE = "ILSVRC2012_devkit_t12.tar.gz"
META_MAT = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"


@dataclass(frozen=True)
class Devkit:
    id_to_wnid: dict[int, str]
    names: dict[str, tuple[str, ...]]
    train_counts: dict[str, int]
    ground_truth: list[int] | None  # ILSVRC2012_ID of validation image 1, 2, ...
    where: str

    @property
    def wnids(self) -> list[str]:
        """The class list: sorted wnids (torchvision's order)."""
        return sorted(self.id_to_wnid.values())

    def val_wnid(self, number: int, name: str) -> str:
        """The wnid of validation image ``number`` (1-based, from its file name)."""
        if self.ground_truth is None:
            raise LayoutError(f"{self.where}: no {GROUND_TRUTH}; cannot label the flat validation images")
        if not 1 <= number <= len(self.ground_truth):
            raise LayoutError(f"{self.where}: the ground truth has {len(self.ground_truth)} lines, but {name} "
                              f"needs line {number}; the ground truth file is shorter than the image list")
        ilsvrc_id = self.ground_truth[number - 1]
        if ilsvrc_id not in self.id_to_wnid:
            raise LayoutError(f"{self.where}: ground truth line {number} ({name}) gives ILSVRC2012_ID {ilsvrc_id}, "
                              "which is not one of meta.mat's 1000 classes")
        return self.id_to_wnid[ilsvrc_id]


def find_devkit(root: Path) -> Path | None:
    """The devkit beside the data: the .tar.gz, or its extracted folder (or a folder holding data/meta.mat)."""
    for candidate in (root / DEVKIT_ARCHIVE, root / "ILSVRC2012_devkit_t12", root):
        if candidate.is_file() or (candidate / META_MAT).is_file():
            return candidate
    return None


# what a real devkit holds is far below these (meta.mat ~0.4 MB, the ground truth ~0.2 MB, the whole archive
# ~10 MB inflated); past them the file is not a devkit, and is never read whole
META_MAT_MAX, GROUND_TRUTH_MAX, DEVKIT_MAX = 16 << 20, 4 << 20, 128 << 20


def load_devkit(path: Path) -> Devkit:
    """Parse a devkit archive or folder. Needs scipy (``pip install -e '.[devkit]'``) for meta.mat. Every
    read is bounded (see the limits above): a devkit that inflates to gigabytes is an error, not a wait."""
    try:
        if path.is_file():
            meta, truth = _archive_members(path, {META_MAT: META_MAT_MAX, GROUND_TRUTH: GROUND_TRUTH_MAX})
            if meta is None:
                raise LayoutError(f"{path}: the devkit archive holds no {META_MAT}")
        else:
            meta = read_side_file(path / META_MAT, META_MAT_MAX, "devkit's meta.mat")
            truth_file = path / GROUND_TRUTH
            truth = read_side_file(truth_file, GROUND_TRUTH_MAX, "validation ground truth") \
                if truth_file.is_file() else None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise LayoutError(f"{path}: the devkit cannot be read ({type(exc).__name__}: {exc}); it is damaged or "
                          "cut short, download it again") from exc
    id_to_wnid, names, counts = parse_meta_mat(meta, f"{path}: {META_MAT}")
    ground_truth = None
    if truth is not None:
        try:
            ground_truth = [int(line) for line in truth.decode().split()]
        except (ValueError, UnicodeDecodeError) as exc:
            raise LayoutError(f"{path}: {GROUND_TRUTH} is not one integer per line ({exc})") from exc
    return Devkit(id_to_wnid, names, counts, ground_truth, str(path))


def _archive_members(path: Path, wanted: dict[str, int]) -> list[bytes | None]:
    """The first member of the (gzipped) tar ``path`` whose name ends with each of ``wanted``, read in one
    streaming pass that inflates at most DEVKIT_MAX bytes, each member at most its own limit."""
    found: dict[str, bytes] = {}
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw) if gzipped else raw
        bounded: Any = BoundedReader(stream, DEVKIT_MAX, str(path))  # a file object: what tarfile reads
        with tarfile.open(fileobj=bounded, mode="r|") as tar:
            for member in tar:
                suffix = next((w for w in wanted if member.name.endswith(w) and w not in found), None)
                if suffix is None or not member.isfile():
                    continue
                if member.size > wanted[suffix]:
                    raise LayoutError(f"{path}: its {member.name} is {member.size} bytes, over the "
                                      f"{wanted[suffix] >> 20} MiB a devkit's takes; it is not one, or it is damaged")
                extracted = tar.extractfile(member)
                if extracted is not None:
                    found[suffix] = extracted.read(wanted[suffix] + 1)
    return [found.get(w) for w in wanted]


def parse_meta_mat(data: bytes, where: str) -> tuple[dict[int, str], dict[str, tuple[str, ...]], dict[str, int]]:
    """ILSVRC2012_ID -> wnid, wnid -> names and wnid -> train image count for the leaf synsets."""
    try:
        import scipy.io
    except ImportError as exc:
        raise LayoutError(f"{where}: reading the devkit's meta.mat needs scipy; "
                          "install it with: pip install scipy (or, in a checkout of imagenet-pack, pip install -e "
                          "'.[devkit]')") from exc
    try:
        synsets = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
        rows = [(int(s["ILSVRC2012_ID"]), str(s["WNID"]), str(s["words"]), int(s["num_children"]),
                 int(s["num_train_images"])) for s in synsets]
    except Exception as exc:  # noqa: BLE001 - scipy's reader fails in many ways on a damaged file
        raise LayoutError(f"{where}: not a readable ILSVRC2012 meta.mat ({type(exc).__name__}: {exc}); "
                          "download the devkit again") from exc
    leaves = [r for r in rows if r[3] == 0]
    if not leaves:
        raise LayoutError(f"{where}: no leaf synsets (num_children == 0) found")
    return ({r[0]: r[1] for r in leaves}, {r[1]: tuple(r[2].split(", ")) for r in leaves},
            {r[1]: r[4] for r in leaves})
