"""GPU decode mode: workers ship JPEG bytes and crop boxes; the device decodes, crops, resizes and flips.

When CPU cores are the bottleneck, moving the decode to the GPU frees them. The dataset yields
``(jpeg bytes as a uint8 tensor, box)`` with :class:`CropBoxDecoder` (box = top, left, height, width, flip,
drawn by the same law and seeds as the fused CPU decoders); :func:`collate_jpeg` keeps the variable-length
byte tensors as a list; :class:`GpuBatchDecoder` turns a batch into uint8 (N, 3, S, S) on the device, ready
for :func:`imagenet_pack.gpu.normalize`:

1. decode: with nvImageCodec (``backend="nvimgcodec"``), one batched call decodes only each crop's region, on
   the hardware JPEG engine, CUDA or the CPU (whichever its backends offer for the device; on a CPU device its
   CPU-only decoder, which is how the wiring is tested without a GPU); the images reach torch without a copy
   (DLPack). Without nvImageCodec, ``torchvision.io.decode_jpeg`` decodes whole images (deprecated in
   torchvision 0.29: a one-line warning says so). Records the device decoder refuses (CMYK, odd JPEGs) are
   decoded by OpenCV on the CPU, and counted in :attr:`GpuBatchDecoder.fallbacks`.
2. resample: every crop of the batch in one ``torchvision.ops.roi_align`` call over the images laid side by
   side in one padded tensor (placed with one masked copy, no per-image loop): bilinear samples averaged
   over each output pixel's footprint (as many samples as the shrink factor), which antialiases like
   torchvision's resize. Pixels differ from the CPU fused decoders' by the filter's shape and rounding:
   measured on real ImageNet JPEGs at 224, mean absolute difference 0.95 levels of 255 (0.69 from
   torchvision's own resized_crop, where the CPU decoders are at 0.42); tested on CPU.
3. flip: one batched ``where``.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..format import Record
from ..read.crops import CenterCropBoxes, RandomResizedCropBoxes
from ..read.pixels import NVIMGCODEC_AVAILABLE, decode_rgb

GPU_BACKENDS = ("nvimgcodec", "torchvision", "auto")
# nvImageCodec's decoders by name: the hardware JPEG engine (A100, H100), CUDA kernels, CPU Huffman + CUDA
NVIMGCODEC_KINDS = {"hw": "HW_GPU_ONLY", "cuda": "GPU_ONLY", "hybrid": "HYBRID_CPU_GPU"}


class CropBoxDecoder:
    """Yields ``(bytes tensor, int64 box [top, left, height, width, flip])``: train (random) or val (centre),
    drawn by the same law and seeds as the fused CPU decoders."""

    def __init__(self, *, train: bool = True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), crop_ratio: float = 224 / 256,
                 flip: bool = True, seed: int = 0):
        self.boxes = (RandomResizedCropBoxes(scale=scale, ratio=ratio, flip=flip, seed=seed) if train
                      else CenterCropBoxes(crop_ratio=crop_ratio))

    def __call__(self, record: Record, index: int, epoch: int | None, where: str):
        box, flip = self.boxes.draw(record.height, record.width, index, epoch)
        data = torch.frombuffer(bytearray(record.image), dtype=torch.uint8)
        return data, torch.tensor([*box, int(flip)], dtype=torch.int64)


def collate_jpeg(batch):
    """-> (list of byte tensors, (N, 5) boxes, (N,) targets)."""
    data = [sample[0] for sample, _ in batch]
    boxes = torch.stack([sample[1] for sample, _ in batch])
    return data, boxes, torch.tensor([target for _, target in batch], dtype=torch.int64)


def _bytes(data) -> bytes:
    """JPEG bytes from a byte string or a uint8 tensor (as :class:`CropBoxDecoder` yields them)."""
    return data.numpy().tobytes() if isinstance(data, torch.Tensor) else bytes(data)


def resample(images: list[torch.Tensor], boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``boxes`` (N, 4: top, left, height, width) out of ``images`` (H x W x 3 uint8, one device) and
    resize each to size x size: (N, 3, size, size) uint8, one batched resample."""
    device = images[0].device
    heights = torch.tensor([im.shape[0] for im in images], device=device)
    widths = torch.tensor([im.shape[1] for im in images], device=device)
    height, width = int(heights.max()), int(widths.max())
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    rows = torch.arange(height, device=device)[None, :, None] < heights[:, None, None]
    inside = rows & (torch.arange(width, device=device)[None, None, :] < widths[:, None, None])
    padded = torch.zeros((len(images), height, width, 3), dtype=dtype, device=device)
    padded[inside] = torch.cat([im.reshape(-1, 3) for im in images]).to(dtype)  # row-major, image after image
    top, left, h, w = boxes.to(device=device, dtype=torch.float32).unbind(1)
    rois = torch.stack([torch.arange(len(images), device=device, dtype=torch.float32), left, top, left + w, top + h], 1)
    from torchvision.ops import roi_align
    out = roi_align(padded.permute(0, 3, 1, 2), rois.to(dtype), output_size=size, spatial_scale=1.0,
                    sampling_ratio=0, aligned=True)
    return out.float().round_().clamp_(0, 255).to(torch.uint8)


class GpuBatchDecoder:
    """Decode, crop, resize (antialiased) and flip a batch on ``device``: uint8 (N, 3, size, size),
    channels-last. ``backend``: "nvimgcodec", "torchvision", or "auto" (nvImageCodec where installed);
    ``kinds`` limits nvImageCodec on a GPU to some of its decoders (``NVIMGCODEC_KINDS``: "hw", "cuda",
    "hybrid"; default: every one it has, best first, with its CPU decoder last)."""

    def __init__(self, size: int = 224, device: torch.device | str = "cuda", backend: str = "auto",
                 kinds: tuple[str, ...] | None = None):
        if backend not in GPU_BACKENDS:
            raise ValueError(f"unknown GPU decode backend {backend!r}; choose one of {GPU_BACKENDS}")
        if kinds is not None and not set(kinds) <= set(NVIMGCODEC_KINDS):
            raise ValueError(f"unknown nvImageCodec decoder kinds {kinds}; choose from {tuple(NVIMGCODEC_KINDS)}")
        self.kinds = kinds
        if backend == "auto":
            backend = "nvimgcodec" if NVIMGCODEC_AVAILABLE else "torchvision"
        if backend == "torchvision":
            warnings.warn("GPU decode through torchvision.io.decode_jpeg, deprecated since torchvision 0.29: "
                          "pip install 'imagenet-pack[gpu-cu12]' (or gpu-cu13) for nvImageCodec", stacklevel=2)
        self.size, self.device, self.backend = size, torch.device(device), backend
        self.fallbacks = 0  # images the device decoder refused, decoded on the CPU instead
        self._nv = None

    def _nvimgcodec(self):
        if self._nv is None:
            from ..read.pixels import _nvimgcodec
            nv, cpu_decoder, params = _nvimgcodec()
            if self.device.type != "cuda":
                decoder = cpu_decoder
            elif self.kinds is None:
                decoder = nv.Decoder(device_id=self.device.index or 0)
            else:
                decoder = nv.Decoder(device_id=self.device.index or 0, backends=[
                    nv.Backend(getattr(nv.BackendKind, NVIMGCODEC_KINDS[k])) for k in self.kinds])
            self._nv = (nv, decoder, params)
        return self._nv

    def decode(self, data: list, boxes: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """HxWx3 uint8 images on the device, and the crop boxes within them (a region decode returns the
        crop itself: its box starts at 0, 0)."""
        boxes = boxes[:, :4].clone()
        if self.backend == "nvimgcodec":
            nv, decoder, params = self._nvimgcodec()
            wanted = boxes.tolist()
            streams = [nv.CodeStream(_bytes(d)).get_sub_code_stream(region=nv.Region(t, l, t + h, l + w))
                       for d, (t, l, h, w) in zip(data, wanted)]
            images = []
            for d, (t, l, h, w), image in zip(data, wanted, decoder.decode(streams, params=params)):
                if image is None:  # declined: OpenCV on the CPU decodes it instead
                    images.append(self._cpu_decode(d)[t:t + h, l:l + w])
                else:
                    images.append(self._to_torch(image))
            boxes[:, :2] = 0
            return images, boxes
        import torchvision.io as tio
        data = [d if isinstance(d, torch.Tensor) else torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                images = list(tio.decode_jpeg(data, mode=tio.ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                images = [self._decode_one(d, tio) for d in data]
        return [im.permute(1, 2, 0) for im in images], boxes

    def _to_torch(self, image) -> torch.Tensor:
        if self.device.type == "cuda":
            return torch.from_dlpack(image)  # the decoder's device buffer, no copy
        return torch.from_numpy(np.asarray(image.cpu()))

    def _cpu_decode(self, data) -> torch.Tensor:
        self.fallbacks += 1
        return torch.from_numpy(decode_rgb(_bytes(data), "GPU decode fallback")).to(self.device)

    def _decode_one(self, data: torch.Tensor, tio) -> torch.Tensor:
        try:
            return tio.decode_jpeg(data, mode=tio.ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return self._cpu_decode(data).permute(2, 0, 1)

    def __call__(self, data: list, boxes: torch.Tensor) -> torch.Tensor:
        """``data``: JPEG bytes (byte strings or uint8 tensors); ``boxes``: (N, 5) top, left, height, width, flip."""
        images, crops = self.decode(data, boxes)
        out = resample(images, crops, self.size)
        flip = boxes[:, 4].to(device=out.device, dtype=torch.bool)[:, None, None, None]
        out = torch.where(flip, out.flip(-1), out)
        return out.contiguous(memory_format=torch.channels_last)
