"""NVIDIA nvImageCodec, the one place that knows it: whether it is installed, how to import it quietly, the
nvJPEG it loads, and its decoders as this package uses them (a one-thread CPU decoder per process for the
workers; the device's decoders for the GPU decode mode and the hybrid feed). Torch-free.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.util
import os
from collections.abc import Iterator
from typing import Any

AVAILABLE = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.nvimgcodec") is not None
MISSING = ("nvImageCodec is not installed: pip install nvidia-nvimgcodec-cu13 (or, in a checkout of imagenet-pack, "
           "pip install -e '.[nvimgcodec]')")
# its JPEG decoders on a GPU, in the order they are tried: the hardware engine, then CPU Huffman + CUDA
KINDS = {"hw": "HW_GPU_ONLY", "hybrid": "HYBRID_CPU_GPU"}
REGIONS_FROM_NVJPEG = (13, 2)  # the first nvJPEG whose region decode keeps fancy upsampling right at the edges
_NV: tuple[int, Any, Any, Any] | None = None  # pid, module, CPU-only decoder, decode parameters


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence file descriptors 1 and 2: nvImageCodec prints, from C, that the GPU libraries it looks for at
    import (nvJPEG, nvJPEG2000, nvTIFF) are missing, which on a CPU-only machine is expected."""
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def cpu_decoder() -> tuple[Any, Any, Any]:
    """This process's nvImageCodec module, CPU-only decoder (one thread: the loader's workers are the
    parallelism) and RGB decode parameters without EXIF rotation, made on first use (again in a forked
    child: a decoder's threads do not survive a fork)."""
    global _NV
    if _NV is None or _NV[0] != os.getpid():
        with quiet():
            import nvidia.nvimgcodec as nv
        decoder = nv.Decoder(device_id=nv.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=1,
                             backends=[nv.Backend(nv.BackendKind.CPU_ONLY)])
        params = nv.DecodeParams(color_spec=nv.ColorSpec.SRGB, apply_exif_orientation=False)
        _NV = (os.getpid(), nv, decoder, params)
    return _NV[1], _NV[2], _NV[3]


def gpu_decoder(device_index: int, *, kinds: tuple[str, ...], threads: int, batch_size: int, hw_load: float,
                options: str = "") -> Any:
    """nvImageCodec's decoder on GPU ``device_index`` with the decoders ``kinds`` (of :data:`KINDS`, tried in
    that order), at most ``threads`` CPU threads, buffers preallocated for ``batch_size`` images. ``hw_load``:
    the share of a batch first given to the hardware engine; below 1, nvImageCodec moves it to keep both
    decoders busy (its adaptive policy: DALI's ``hw_decoder_load``), at 1 the others take only what the engine
    refuses. ``options`` adds nvImageCodec decoder options."""
    nv = cpu_decoder()[0]
    backends = []
    for kind in kinds:
        if kind == "hw":
            policy = nv.LoadHintPolicy.ADAPTIVE_MINIMIZE_IDLE_TIME if hw_load < 1 else nv.LoadHintPolicy.FIXED
            backends.append(nv.Backend(nv.BackendKind.HW_GPU_ONLY, load_hint=hw_load, load_hint_policy=policy))
        else:
            backends.append(nv.Backend(getattr(nv.BackendKind, KINDS[kind])))
    settings = (f":fancy_upsampling=1 nvjpeg_hw_decoder:preallocate_batch_size={batch_size} "
                "nvjpeg_hw_decoder:preallocate_width_hint=512 nvjpeg_hw_decoder:preallocate_height_hint=512 "
                f"{options}").strip()
    return nv.Decoder(device_id=device_index, max_num_cpu_threads=threads, options=settings, backends=backends)


def nvjpeg_version() -> tuple[int, int, int] | None:
    """The version of the nvJPEG library nvImageCodec loads (asked with ``nvjpegGetProperty``), or None when
    none is found."""
    spec = importlib.util.find_spec("nvidia")
    found = [path for base in (spec.submodule_search_locations or [] if spec else [])
             for path in sorted(glob.glob(os.path.join(base, "**", "libnvjpeg.so*"), recursive=True))]
    for name in found + ["libnvjpeg.so.13", "libnvjpeg.so.12"]:
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        parts = []
        for prop in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
            value = ctypes.c_int()
            if library.nvjpegGetProperty(prop, ctypes.byref(value)) != 0:
                break
            parts.append(value.value)
        if len(parts) == 3:
            return parts[0], parts[1], parts[2]
    return None
