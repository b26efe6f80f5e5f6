"""GPU decode mode: a batch of stored JPEGs decoded, cropped, resized and flipped on the device.

:class:`GpuBatchDecoder` follows the same :class:`~imagenet_pack.read.crops.Plan` per sample as the fused CPU
decoders (same law, same seeds) and writes uint8 (N, 3, S, S) channels-last batches, ready for
:func:`imagenet_pack.gpu.normalize`:

1. decode: with nvImageCodec, one batched call decodes only each plan's box, on the hardware JPEG engine,
   CUDA or the CPU (whichever its backends offer for the device; on a CPU device its CPU-only decoder, which
   is how the code is tested without a GPU), on the caller's current stream; the images reach torch
   without a copy (DLPack). Without nvImageCodec, ``torchvision.io.decode_jpeg`` decodes whole images
   (deprecated in torchvision 0.29: a one-line warning says so). An image the device decoder refuses, fails
   on, or returns at another size than its box is decoded by OpenCV on the CPU instead, and counted in
   :attr:`GpuBatchDecoder.fallbacks`.
2. resample: each image on its own, so every crop ends at its own image's edge (torchvision's resize
   replicates edge pixels: nothing from another image or from padding bleeds in): antialiased bilinear in
   float32 (``F.interpolate(antialias=True)``, the kernel of torchvision's tensor resize) into its row of one
   preallocated batch, then the plan's window and flip. Float32 throughout: in half precision CUDA's
   kernels would quantise sample positions and overflow sums on large crops.

No host synchronisation anywhere: sizes, windows and flips are known on the host from the plans, and the
only host-to-device copies (a fallback image) come from pinned memory.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ..format import Record
from ..read.crops import Plan
from ..read.pixels import NVIMGCODEC_AVAILABLE, decode_box, nvimgcodec
from .stage import resolve_device

GPU_BACKENDS = ("nvimgcodec", "torchvision", "auto")
# nvImageCodec's decoders by name: the hardware JPEG engine (A100, H100), CUDA kernels, CPU Huffman + CUDA
NVIMGCODEC_KINDS = {"hw": "HW_GPU_ONLY", "cuda": "GPU_ONLY", "hybrid": "HYBRID_CPU_GPU"}


def resample_into(image: torch.Tensor, plan: Plan, size: int, dest: torch.Tensor) -> None:
    """``image`` (its plan's box, H x W x 3 uint8, on the device) resized, windowed and flipped into ``dest``
    (3 x size x size uint8), in float32 on the current stream."""
    x = image.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    y = F.interpolate(x, size=plan.resize, mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = plan.offset
    y = y[:, top:top + size, left:left + size]
    if plan.flip:
        y = y.flip(-1)
    dest.copy_(y.round_().clamp_(0, 255))


class GpuBatchDecoder:
    """Decode a batch on ``device``: uint8 (N, 3, size, size), channels-last. ``backend``: "nvimgcodec",
    "torchvision", or "auto" (nvImageCodec where installed); ``kinds`` limits nvImageCodec on a GPU to some of
    its decoders (``NVIMGCODEC_KINDS``: "hw", "cuda", "hybrid"; default: every one it has, best first)."""

    def __init__(self, size: int = 224, device: torch.device | str = "cuda", backend: str = "auto",
                 kinds: tuple[str, ...] | None = None):
        if backend not in GPU_BACKENDS:
            raise ValueError(f"unknown GPU decode backend {backend!r}; choose one of {GPU_BACKENDS}")
        if kinds is not None and not set(kinds) <= set(NVIMGCODEC_KINDS):
            raise ValueError(f"unknown nvImageCodec decoder kinds {kinds}; choose from {tuple(NVIMGCODEC_KINDS)}")
        if backend == "auto":
            backend = "nvimgcodec" if NVIMGCODEC_AVAILABLE else "torchvision"
        if backend == "torchvision":
            warnings.warn("GPU decode through torchvision.io.decode_jpeg, deprecated since torchvision 0.29: "
                          "pip install nvidia-nvimgcodec-cu12[nvjpeg] (or -cu13, as torch's CUDA; in a checkout: pip "
                          "install -e '.[gpu-cu12]') for nvImageCodec", stacklevel=2)
        self.size, self.device, self.backend, self.kinds = size, resolve_device(device), backend, kinds
        self.fallbacks = 0  # images the device decoder refused, decoded on the CPU instead
        self._nv = None

    def __call__(self, records: list[Record], plans: list[Plan], wheres: list[str] | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """``out`` (N, 3, size, size) uint8 on the device, made here when not given, holding each record's
        sample as its plan says, queued on the current stream."""
        if out is None:
            out = torch.empty((len(records), self.size, self.size, 3), dtype=torch.uint8,
                              device=self.device).permute(0, 3, 1, 2)
        wheres = wheres or [f"record {i} of the batch" for i in range(len(records))]
        for i, (image, plan) in enumerate(zip(self.decode(records, plans, wheres), plans)):
            resample_into(image, plan, self.size, out[i])
        return out

    def decode(self, records: list[Record], plans: list[Plan], wheres: list[str]) -> list[torch.Tensor]:
        """Each plan's box as an H x W x 3 uint8 tensor on the device."""
        if self.backend == "nvimgcodec":
            images = self._decode_nvimgcodec(records, plans)
        else:
            images = self._decode_torchvision(records, plans)
        return [image if image is not None else self._cpu_decode(record, plan, where)
                for image, record, plan, where in zip(images, records, plans, wheres)]

    def _decoder(self):
        if self._nv is None:
            nv, cpu_decoder, params = nvimgcodec()
            if self.device.type != "cuda":
                decoder = cpu_decoder
            elif self.kinds is None:
                decoder = nv.Decoder(device_id=self.device.index)
            else:
                decoder = nv.Decoder(device_id=self.device.index, backends=[
                    nv.Backend(getattr(nv.BackendKind, NVIMGCODEC_KINDS[k])) for k in self.kinds])
            self._nv = (nv, decoder, params)
        return self._nv

    def _decode_nvimgcodec(self, records: list[Record], plans: list[Plan]) -> list[torch.Tensor | None]:
        nv, decoder, params = self._decoder()
        images: list[torch.Tensor | None] = [None] * len(records)
        streams, index = [], []
        for i, (record, plan) in enumerate(zip(records, plans)):
            top, left, h, w = plan.box
            try:  # a header it cannot parse: that image alone goes to the CPU
                stream = nv.CodeStream(record.image)
                if (stream.height, stream.width) == (record.height, record.width) and stream.num_channels in (1, 3):
                    streams.append(stream.get_sub_code_stream(region=nv.Region(top, left, top + h, left + w)))
                    index.append(i)
            except Exception:  # noqa: BLE001 - nvImageCodec's own error types
                continue
        stream_handle = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        try:
            decoded = decoder.decode(streams, params=params, cuda_stream=stream_handle)
        except Exception:  # noqa: BLE001 - one bad image must not cost the batch: try them one by one
            decoded = [self._decode_one(decoder, s, params, stream_handle) for s in streams]
        for i, image in zip(index, decoded):
            top, left, h, w = plans[i].box
            if image is not None and tuple(image.shape) == (h, w, 3):
                images[i] = self._to_torch(image)
        return images

    @staticmethod
    def _decode_one(decoder, stream, params, stream_handle):
        try:
            return decoder.decode(stream, params=params, cuda_stream=stream_handle)
        except Exception:  # noqa: BLE001
            return None

    def _decode_torchvision(self, records: list[Record], plans: list[Plan]) -> list[torch.Tensor | None]:
        import torchvision.io as tio
        data = [torch.frombuffer(bytearray(r.image), dtype=torch.uint8) for r in records]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                full = list(tio.decode_jpeg(data, mode=tio.ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                full = [None] * len(records)
        images: list[torch.Tensor | None] = []
        for image, record, plan in zip(full, records, plans):
            top, left, h, w = plan.box
            ok = image is not None and tuple(image.shape) == (3, record.height, record.width)
            images.append(image[:, top:top + h, left:left + w].permute(1, 2, 0) if ok else None)
        return images

    def _to_torch(self, image) -> torch.Tensor:
        if self.device.type == "cuda":
            return torch.from_dlpack(image)  # the decoder's device buffer, no copy, ordered on this stream
        return torch.from_numpy(np.asarray(image.cpu()))

    def _cpu_decode(self, record: Record, plan: Plan, where: str) -> torch.Tensor:
        """OpenCV's decode of the plan's box (DecodeError if it fails too), moved to the device."""
        self.fallbacks += 1
        pixels = torch.from_numpy(np.ascontiguousarray(
            decode_box(record.image, plan.box, 1, (record.height, record.width), f"{where} (GPU decode fallback)")))
        if self.device.type == "cuda":
            return pixels.pin_memory().to(self.device, non_blocking=True)
        return pixels
