"""nvImageCodec's CPU backend as a region decoder: OpenCV's pixels for every box and JPEG flavour, fallbacks."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from imagenet_pack import CenterCropDecoder, LmdbImageNet, RandomResizedCropDecoder
from imagenet_pack.errors import DecoderUnavailableError
from imagenet_pack.read import decoders, pixels
from imagenet_pack.read.pixels import NVIMGCODEC_AVAILABLE, decode_box, decode_rgb

from test_region_decoder import FLAVOURS, boxes, jpeg, photo

# CI installs the test extras, nvImageCodec among them: there these tests must run, not skip
if os.environ.get("IMAGENET_PACK_REQUIRE_ROI") == "1":
    assert NVIMGCODEC_AVAILABLE, "nvImageCodec (a test extra) is not installed"
needs_nvimgcodec = pytest.mark.skipif(not NVIMGCODEC_AVAILABLE, reason="nvImageCodec not installed")


@needs_nvimgcodec
@pytest.mark.parametrize("flavour", [*FLAVOURS, "grey"])
def test_region_pixels_equal_opencv(flavour):
    data = jpeg(photo(375, 500), FLAVOURS.get(flavour, []), grey=flavour == "grey")
    full = decode_rgb(data, "t")
    for top, left, h, w in boxes(375, 500, random.Random(2)):
        assert pixels._decode_region_nvimgcodec(data, (top, left, h, w)) is not None  # nvImageCodec decoded it
        for flip in (False, True):
            expected = full[top:top + h, left:left + w][:, ::-1] if flip else full[top:top + h, left:left + w]
            np.testing.assert_array_equal(decode_box(data, (top, left, h, w), 1, "t", "nvimgcodec", flip), expected)


@needs_nvimgcodec
def test_fused_decoders_give_the_same_samples_as_opencv(db_session, monkeypatch):
    calls = []
    real = pixels._decode_region_nvimgcodec
    monkeypatch.setattr(pixels, "_decode_region_nvimgcodec", lambda data, box: calls.append(box) or real(data, box))
    monkeypatch.setattr(decoders, "NVIMGCODEC_MIN_PIXELS", 0)  # the test images are small: take them anyway
    for make in (lambda b: RandomResizedCropDecoder(24, seed=5, backend=b), lambda b: CenterCropDecoder(16, backend=b)):
        reference = LmdbImageNet(db_session, "train", decoder=make("opencv"))
        ours = LmdbImageNet(db_session, "train", decoder=make("nvimgcodec"))
        for i in range(len(reference)):
            assert torch.equal(reference[(i, 3)][0], ours[(i, 3)][0]), i
    assert len(calls) >= 24  # at full scale through nvImageCodec (boxes decoded at 1/2-1/8 go to OpenCV)
    before = len(calls)
    monkeypatch.setattr(decoders, "NVIMGCODEC_MIN_PIXELS", 64 * 64)  # small images: OpenCV is faster
    LmdbImageNet(db_session, "train", decoder=RandomResizedCropDecoder(24, backend="nvimgcodec"))[(0, 0)]
    assert len(calls) == before


@needs_nvimgcodec
def test_what_nvimgcodec_declines_goes_to_opencv(monkeypatch):
    data = jpeg(photo(64, 80), [])
    monkeypatch.setattr(pixels, "_decode_region_nvimgcodec", lambda data, box: None)
    np.testing.assert_array_equal(decode_box(data, (3, 5, 40, 50), 1, "t", "nvimgcodec"),
                                  decode_rgb(data, "t")[3:43, 5:55])

    def broken(data, box):
        raise RuntimeError("nvImageCodec failure")

    monkeypatch.setattr(pixels, "_decode_region_nvimgcodec", broken)
    with pytest.raises(pixels.DecodeError, match=r"rec 4 \(nvImageCodec: nvImageCodec failure\): stored image cannot"):
        decode_box(b"\xff\xd8" + bytes(100), (0, 0, 4, 4), 1, "rec 4", "nvimgcodec")


def test_auto_picks_the_fastest_installed_and_a_missing_backend_says_what_to_install(monkeypatch):
    monkeypatch.setattr(decoders, "ROI_AVAILABLE", False)
    monkeypatch.setattr(decoders, "NVIMGCODEC_AVAILABLE", True)
    assert RandomResizedCropDecoder(8, backend="auto").backend == "nvimgcodec"
    monkeypatch.setattr(decoders, "ROI_AVAILABLE", True)
    assert RandomResizedCropDecoder(8, backend="auto").backend == "roi"  # measured faster: it decodes at 1/2-1/8
    monkeypatch.setattr(decoders, "NVIMGCODEC_AVAILABLE", False)
    with pytest.raises(DecoderUnavailableError, match=r"pip install 'imagenet-pack\[nvimgcodec\]'"):
        CenterCropDecoder(8, backend="nvimgcodec")
