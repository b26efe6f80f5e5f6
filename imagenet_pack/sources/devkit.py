"""The ILSVRC2012 devkit: class list, names and validation ground truth.

``data/meta.mat`` lists 1860 synsets in ILSVRC2012_ID order; the 1000 with ``num_children == 0`` are the
classes. ``data/ILSVRC2012_validation_ground_truth.txt`` gives one ILSVRC2012_ID per validation image in file
name order. ILSVRC2012_ID order is NOT sorted-wnid order: targets are positions in the sorted wnid list, as
torchvision assigns them, so every ID goes through meta.mat to its wnid first.
"""
from __future__ import annotations

import io
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import LayoutError

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


def load_devkit(path: Path) -> Devkit:
    """Parse a devkit archive or folder. Needs scipy (``pip install 'imagenet-pack[devkit]'``) for meta.mat."""
    try:
        if path.is_file():
            with tarfile.open(path, "r:*") as tar:
                files = {m.name: m for m in tar.getmembers() if m.isfile()}
                meta = _member(tar, files, META_MAT, path)
                truth = _member(tar, files, GROUND_TRUTH, path, required=False)
        else:
            meta = (path / META_MAT).read_bytes()
            truth_file = path / GROUND_TRUTH
            truth = truth_file.read_bytes() if truth_file.is_file() else None
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


def _member(tar: tarfile.TarFile, files: dict, suffix: str, path: Path, required: bool = True) -> bytes | None:
    matches = [name for name in files if name.endswith(suffix)]
    if not matches:
        if required:
            raise LayoutError(f"{path}: the devkit archive holds no {suffix}")
        return None
    return tar.extractfile(files[matches[0]]).read()


def parse_meta_mat(data: bytes, where: str) -> tuple[dict[int, str], dict[str, tuple[str, ...]], dict[str, int]]:
    """ILSVRC2012_ID -> wnid, wnid -> names and wnid -> train image count for the leaf synsets."""
    try:
        import scipy.io
    except ImportError as exc:
        raise LayoutError(f"{where}: reading the devkit's meta.mat needs scipy; "
                          "install it with: pip install 'imagenet-pack[devkit]'") from exc
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
