"""GPU decode mode: the staged rows of a batch decoded, cropped, resized and flipped on the device.

:class:`GpuBatchDecoder` takes records staged by the workers (:mod:`imagenet_pack.read.staged`: their bytes and
the plans the fused CPU decoders would draw, same law and seeds) and writes each sample into its row of a
uint8 (N, 3, S, S) channels-last batch, ready for :func:`imagenet_pack.gpu.normalize`:

1. prepare (:meth:`GpuBatchDecoder.prepare`, on the host, while the batch before is submitted): each device
   row's code stream, its header parsed and its region set.
2. decode, one batched nvImageCodec call on the caller's stream. On CUDA its decoders in the order the
   hardware likes: the hardware JPEG engine (A100, H100 and later) first, the hybrid CPU+GPU decoder behind it
   for what the engine refuses (progressive and unusual files), with buffers preallocated at the batch size
   and a bounded number of CPU threads (the loader's workers need the cores); decoded images are reused
   across batches. On a CPU device its CPU decoder, which is how the code is tested without a GPU. nvJPEG
   before 13.2 decodes the edge of a region with fancy (libjpeg's) chroma upsampling wrongly, so there whole
   images are decoded and the box is taken by the resample: the same pixels, never a warning; from 13.2 on
   only each box is decoded. Without nvImageCodec, ``torchvision.io.decode_jpeg`` decodes whole images
   (deprecated in torchvision 0.29: a one-line warning says so). An image the device refuses, fails on, or
   returns at another size is decoded by OpenCV instead, counted in :attr:`GpuBatchDecoder.fallbacks`.
3. resample, :func:`.resample.resample_boxes`: two kernel launches for the whole batch, each box read where
   the decoder wrote it (its address and strides, from the decoded image's array interface: no conversion to
   a tensor, no copy), work proportional to the boxes.

No host synchronisation: sizes, windows and flips are on the host already (the plans), and what the device
reads from the host (the box table, a fallback's pixels) comes from pinned memory.
"""
from __future__ import annotations

import threading
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch

from ..machine import default_workers
from ..read import nvcodec
from ..read.pixels import decode_box
from ..read.staged import StagedRecords
from .device import StageClock, host_empty, is_cuda, resolve_device, stream_handle, timed
from .resample import Decoded, box_rows, resample_boxes

GPU_BACKENDS = ("nvimgcodec", "torchvision", "auto")


class Prepared(NamedTuple):
    """A batch's device rows made ready for the decoder on the host (:meth:`GpuBatchDecoder.prepare`)."""

    rows: np.ndarray  # the staged rows decoded on the device
    inputs: list  # what the decoder takes: nvImageCodec code streams, or torchvision's byte tensors ...
    of: list[int]  # ... inputs[i] is rows[of[i]]'s; the rows without one are decoded by OpenCV


class GpuBatchDecoder:
    """Decode staged rows on ``device`` into size x size uint8 samples. ``backend``: "nvimgcodec",
    "torchvision", or "auto" (nvImageCodec where installed). On CUDA: ``kinds`` limits nvImageCodec to some of
    its decoders (:data:`~imagenet_pack.read.nvcodec.KINDS`: "hw", "hybrid"; default both, the engine first),
    ``batch_size`` sizes its preallocation, ``threads`` bounds its CPU threads (default: a quarter of the cores,
    at most 4), ``hw_load`` is the share of a batch first given to the engine (below 1 the hybrid decoder
    works beside it, nvImageCodec balancing the two; at 1 it takes only what the engine refuses), ``options``
    adds nvImageCodec decoder options (e.g. ``nvjpeg_cuda_decoder:hybrid_huffman_threshold=0``
    for GPU Huffman decoding of every image)."""

    def __init__(self, size: int = 224, device: torch.device | str = "cuda", backend: str = "auto", *,
                 kinds: tuple[str, ...] | None = None, batch_size: int = 256, threads: int | None = None,
                 hw_load: float = 1.0, options: str = ""):
        if backend not in GPU_BACKENDS:
            raise ValueError(f"unknown GPU decode backend {backend!r}; choose one of {GPU_BACKENDS}")
        if kinds is not None and not (kinds and set(kinds) <= set(nvcodec.KINDS)):
            raise ValueError(f"unknown nvImageCodec decoder kinds {kinds}; choose from {tuple(nvcodec.KINDS)}")
        if not 0 < hw_load <= 1:
            raise ValueError(f"hw_load is a share of each batch, above 0 and at most 1; got {hw_load}")
        if backend == "auto":
            backend = "nvimgcodec" if nvcodec.AVAILABLE else "torchvision"
        if backend == "torchvision":
            warnings.warn("GPU decode through torchvision.io.decode_jpeg, deprecated since torchvision 0.29: "
                          "pip install nvidia-nvimgcodec-cu12[nvjpeg] (or -cu13, as torch's CUDA; in a checkout: pip "
                          "install -e '.[gpu-cu12]') for nvImageCodec", stacklevel=2)
        self.size, self.device, self.backend, self.kinds = size, resolve_device(device), backend, kinds
        self.batch_size, self.options, self.hw_load = batch_size, options, hw_load
        self.threads = threads or max(1, min(4, default_workers() // 4))
        # regions where the decoder gets them right; whole images (the box cut by the resample) elsewhere
        version = nvcodec.nvjpeg_version() if is_cuda(self.device) and backend == "nvimgcodec" else None
        self.regions = backend == "nvimgcodec" and (not is_cuda(self.device)
                                                    or (version or (0,)) >= nvcodec.REGIONS_FROM_NVJPEG)
        self.fallbacks = 0  # images the device decoder refused, decoded on the CPU instead
        self.stages: StageClock | None = None  # times decode, table and resample when set
        self._nv: tuple | None = None
        self._making = threading.Lock()
        self._reused: dict[int, list] = {}  # per stream: the images of its last batch, decoded into again

    def __call__(self, staged: StagedRecords, out: torch.Tensor | None = None, first: int = 0,
                 prepared: Prepared | None = None) -> torch.Tensor:
        """Write staged row r's sample into row ``first + r`` of ``out`` (N, 3, size, size) uint8 channels-last on
        the device (made here when not given), queued on the current stream; rows the workers decoded
        (``LENGTH`` 0) are left as they are. ``prepared``: :meth:`prepare`'s for ``staged``, made ahead (else
        made here). Returns ``out``."""
        if out is None:
            out = torch.empty((first + staged.rows, self.size, self.size, 3), dtype=torch.uint8,
                              device=self.device).permute(0, 3, 1, 2)
        if prepared is None:
            prepared = self.prepare(staged)
        rows = prepared.rows
        if len(rows):
            with timed(self.stages, "decode"):
                images = self.decode(staged, prepared)
            with timed(self.stages, "table"):
                boxes = box_rows(staged.fields, rows, images, self.size, first)
            with timed(self.stages, "resample"):
                resample_boxes(boxes, out, self.size)
        return out

    def prepare(self, staged: StagedRecords) -> Prepared:
        """The host's part of decoding ``staged``, which needs no device: the device rows' code streams (each
        header parsed, its region set; one that cannot be parsed or does not match its staged size left to
        OpenCV). Kept apart so that a batch is prepared while the one before is submitted."""
        rows = staged.on_device
        if self.backend != "nvimgcodec":
            data = [torch.frombuffer(bytearray(staged.record(row)), dtype=torch.uint8) for row in rows]
            return Prepared(rows, data, list(range(len(rows))))
        nv = self._decoder()[0]
        streams, of = [], []
        for k, row in enumerate(rows):
            top, left, h, w = staged.box(row)
            try:  # a header it cannot parse: that image alone goes to the CPU
                stream = nv.CodeStream(np.frombuffer(staged.record(row), np.uint8))
                if (stream.height, stream.width) != staged.size(row) or stream.num_channels not in (1, 3):
                    continue
                streams.append(stream.get_sub_code_stream(region=nv.Region(top, left, top + h, left + w))
                               if self.regions else stream)
                of.append(k)
            except Exception:  # noqa: BLE001 - nvImageCodec's own error types
                continue
        return Prepared(rows, streams, of)

    def decode(self, staged: StagedRecords, prepared: Prepared) -> list[Decoded]:
        """Where each of the prepared rows was decoded on the device: its box where :attr:`regions`, else the
        whole image (the box at its offset), whichever decoder made it."""
        if self.backend == "nvimgcodec":
            images = self._decode_nvimgcodec(staged, prepared)
        else:
            images = self._decode_torchvision(staged, prepared)
        return [image if image is not None else self._cpu_decode(staged, row)
                for row, image in zip(prepared.rows, images)]

    def _box(self, staged: StagedRecords, row: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of what is decoded of staged row ``row``: its box, or the whole image."""
        return staged.box(row) if self.regions else (0, 0, *staged.size(row))

    def _origin(self, staged: StagedRecords, row: int) -> tuple[int, int]:
        """Where staged row ``row``'s box starts in what is decoded of it: (0, 0) where that is the box."""
        return (0, 0) if self.regions else staged.box(row)[:2]

    def _decoder(self):
        """(nvImageCodec, this decoder's nvImageCodec decoder, decode parameters), made once: the thread that
        prepares batches and the one that submits them both ask."""
        with self._making:
            if self._nv is None:
                nv, cpu_decoder, params = nvcodec.cpu_decoder()
                decoder = cpu_decoder if not is_cuda(self.device) else nvcodec.gpu_decoder(
                    self.device.index, kinds=self.kinds or tuple(nvcodec.KINDS), threads=self.threads,
                    batch_size=self.batch_size, hw_load=self.hw_load, options=self.options)
                self._nv = (nv, decoder, params)
        return self._nv

    def _decode_nvimgcodec(self, staged: StagedRecords, prepared: Prepared) -> list[Decoded | None]:
        _, decoder, params = self._decoder()
        rows, streams, of = prepared
        handle = stream_handle(self.device)
        reused = self._reused.get(handle, [])
        kwargs = {"images": reused[:len(streams)]} if len(reused) >= len(streams) > 0 else {}
        try:
            decoded = decoder.decode(streams, params=params, cuda_stream=handle, **kwargs)
        except Exception:  # noqa: BLE001 - one bad image must not cost the batch: try them one by one
            decoded = [self._decode_one(decoder, s, params, handle) for s in streams]
        if is_cuda(self.device) and all(image is not None for image in decoded) and len(decoded) >= len(reused):
            self._reused[handle] = list(decoded)  # decoded into again by this stream's next batch
        images: list[Decoded | None] = [None] * len(rows)
        for k, image in zip(of, decoded):
            if image is not None and tuple(image.shape) == (*self._box(staged, rows[k])[2:], 3):
                images[k] = self._placed(image, *self._origin(staged, rows[k]))
        return images

    @staticmethod
    def _decode_one(decoder, stream, params, handle):
        try:
            return decoder.decode(stream, params=params, cuda_stream=handle)
        except Exception:  # noqa: BLE001
            return None

    def _placed(self, image: Any, top: int, left: int) -> Decoded:
        """Where nvImageCodec's HxWx3 uint8 ``image`` lies (its array interface: no conversion, no copy); the
        box starts at (``top``, ``left``) of it."""
        if is_cuda(self.device):
            interface = image.__cuda_array_interface__
        else:
            image = np.asarray(image.cpu())
            interface = image.__array_interface__
        _, width, channels = interface["shape"]
        row, pixel, channel = interface.get("strides") or (width * channels, channels, 1)
        return Decoded(interface["data"][0], (row, pixel, channel), top, left, image)

    def _decode_torchvision(self, staged: StagedRecords, prepared: Prepared) -> list[Decoded | None]:
        import torchvision.io as tio
        rows, data, _ = prepared
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                full = list(tio.decode_jpeg(data, mode=tio.ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                full = [None] * len(rows)
        out: list[Decoded | None] = []
        for image, row in zip(full, rows):
            if image is None or tuple(image.shape) != (3, *staged.size(row)):
                out.append(None)
                continue
            top, left = staged.box(row)[:2]
            out.append(Decoded(image.data_ptr(), _byte_strides(image.permute(1, 2, 0)), top, left, image))
        return out

    def _cpu_decode(self, staged: StagedRecords, row: int) -> Decoded:
        """OpenCV's decode of what the device would have decoded (DecodeError if it fails too), moved to the
        device from pinned memory."""
        self.fallbacks += 1
        pixels = decode_box(bytes(staged.record(row)), self._box(staged, row), 1, staged.size(row),
                            f"staged record {row} (GPU decode fallback)")
        host = host_empty(pixels.shape, torch.uint8, self.device)
        np.copyto(host.numpy(), pixels)
        image = host.to(self.device, non_blocking=True) if is_cuda(self.device) else host
        return Decoded(image.data_ptr(), _byte_strides(image), *self._origin(staged, row), image)


def _byte_strides(image: torch.Tensor) -> tuple[int, int, int]:
    """(row, pixel, channel) strides in bytes of an HxWx3 uint8 tensor."""
    row, pixel, channel = image.stride()
    return row, pixel, channel
