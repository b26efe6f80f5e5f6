"""The device resample (two Triton kernels, run by Triton's interpreter on the CPU device: the code a GPU runs):
ATen's antialiased bilinear pixels for every box, window, flip and stride; a fixed number of operations and
work proportional to the boxes whatever the batch; nothing that would make a CUDA host wait."""
from __future__ import annotations

import helpers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from imagenet_pack import LmdbImageNet, RandomResizedCropDecoder
from imagenet_pack.bench.feed import stage_batch
from imagenet_pack.gpu.decode import GpuBatchDecoder
from imagenet_pack.gpu.resample import Decoded, box_rows, resample_boxes
from imagenet_pack.read.staged import ROW


def plan_row(box: tuple[int, int], resize: tuple[int, int], window: tuple[int, int], flip: bool) -> np.ndarray:
    row = np.zeros((), ROW)
    row["box_height"], row["box_width"] = box
    row["resize_height"], row["resize_width"] = resize
    row["window_top"], row["window_left"] = window
    row["flip"] = flip
    return row


def reference(image: np.ndarray, top: int, left: int, row: np.ndarray, size: int) -> torch.Tensor:
    """torchvision's tensor pipeline on the box: antialiased bilinear resize, window, flip, rounded."""
    h, w = int(row["box_height"]), int(row["box_width"])
    box = torch.from_numpy(np.ascontiguousarray(image[top:top + h, left:left + w])).permute(2, 0, 1)[None].float()
    out = F.interpolate(box, size=(int(row["resize_height"]), int(row["resize_width"])),
                        mode="bilinear", antialias=True, align_corners=False)[0]
    y, x = int(row["window_top"]), int(row["window_left"])
    out = out[:, y:y + size, x:x + size]
    return (out.flip(-1) if row["flip"] else out).round().clamp(0, 255)


def test_the_kernels_give_aten_antialiased_pixels_for_every_box_window_flip_and_layout():
    """Shrinking and enlarging, square and not, windows inside a larger resize, flips, boxes at an offset in a
    larger image, and images laid out HWC or CHW (torchvision's decoder): each sample equals ATen's
    antialiased resize of its box (one level at most, where a value lies on a rounding edge); a sample lands in
    the batch row its table names, the others untouched."""
    rng = np.random.default_rng(0)
    size = 24
    cases = [((90, 70), (24, 24), (0, 0), False), ((40, 100), (24, 30), (0, 6), True),
             ((12, 9), (31, 24), (7, 0), False), ((24, 24), (24, 24), (0, 0), True),
             ((200, 15), (26, 26), (2, 1), True)]
    images, plans, expected = [], [], []
    for k, (box, resize, window, flip) in enumerate(cases):
        top, left = k * 3, k * 2
        pixels = rng.integers(0, 256, (box[0] + top + 5, box[1] + left + 4, 3), dtype=np.uint8)
        row = plan_row(box, resize, window, flip)
        if k % 2:  # planar, as torchvision decodes: the kernel follows the strides
            planar = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
            view = planar.permute(1, 2, 0)
            images.append(Decoded(view.data_ptr(), tuple(view.stride()), top, left, planar))
        else:
            images.append(Decoded(pixels.ctypes.data, pixels.strides, top, left, pixels))
        plans.append(row)
        expected.append(reference(pixels, top, left, row, size))
    batch = torch.full((len(cases) + 2, size, size, 3), 7, dtype=torch.uint8).permute(0, 3, 1, 2)
    resample_boxes(box_rows(np.stack(plans), np.arange(len(cases)), images, size, first=2), batch, size)
    assert (batch[:2] == 7).all()
    for k, want in enumerate(expected):
        diff = (batch[k + 2].float() - want).abs()
        assert diff.max() <= 1 and diff.mean() < 0.02, (cases[k], diff.max(), diff.mean())


class Watch(TorchDispatchMode):
    """Counts the computing operations (views and allocations aside) and the elements they write; notes any
    that would make a CUDA host wait."""

    VIEWS = {"view", "_unsafe_view", "reshape", "permute", "expand", "slice", "select", "as_strided", "alias",
             "detach", "empty", "empty_strided", "empty_like", "lift_fresh", "unsqueeze", "squeeze", "t",
             "transpose", "_reshape_alias", "set"}
    SYNC = ("nested", "to_padded", "nonzero", "_local_scalar_dense", "masked_select", "unique", "equal",
            "is_nonzero", "allclose")

    def __init__(self):
        super().__init__()
        self.ops, self.written, self.sync = 0, 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if any(s in name for s in self.SYNC):
            self.sync.add(name)
        if name.rstrip("_") not in self.VIEWS:
            self.ops += 1
            for o in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(o, torch.Tensor):
                    self.written += o.numel()
        return out


@pytest.fixture(scope="module")
def sized_db(tmp_path_factory):
    """Eight small photos and one 8x larger on each side: a batch of small boxes and one large one."""
    root = tmp_path_factory.mktemp("sized")
    helpers.photo_tree(root / "src", [(48, 64)] * 8 + [(384, 512)], split="train")
    helpers.convert(root / "src", root / "db", helpers.opts(splits=("train",)))
    return root / "db"


@pytest.mark.nvimgcodec
def test_the_device_path_is_a_fixed_handful_of_operations_and_work_proportional_to_the_boxes(sized_db):
    """GPU decode mode on the CPU device: no operation that waits on a device; the same number of operations
    for 2 rows as for 8; and the one large image adds elements written in proportion to its own pixels, not
    its size times the batch (the boxes are never padded to the largest)."""
    ds = LmdbImageNet(sized_db, "train", decoder=RandomResizedCropDecoder(32, seed=1, scale=(1.0, 1.0),
                                                                        ratio=(1.0, 1.0)))
    large = max(range(len(ds)), key=lambda i: int(ds.sizes[i][0]) * int(ds.sizes[i][1]))
    small = [i for i in range(len(ds)) if i != large]
    decoder = GpuBatchDecoder(32, "cpu")

    def watch(indices):
        staged, _ = stage_batch(ds, [(i, 0) for i in indices])
        with Watch() as w:
            decoder(staged)
        return w

    two, eight = watch(small[:2]), watch(small[:1] + [large] + small[1:7])
    assert not two.sync | eight.sync
    assert eight.ops == two.ops <= 6
    without = watch(small[:7] + small[:1])
    pixels = 3 * int(ds.sizes[large][0]) * int(ds.sizes[large][1])
    assert eight.written - without.written <= 3 * pixels
