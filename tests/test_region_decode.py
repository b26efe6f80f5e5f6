"""Region decoding: nvImageCodec's CPU backend gives OpenCV's pixels for any box and JPEG flavour; what it
declines goes to OpenCV; bad data and bad boxes raise the package's errors."""
from __future__ import annotations

import io
import random

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_pack import CenterCropDecoder, LmdbImageNet, RandomResizedCropDecoder
from imagenet_pack.contract.codec import decode_rgb
from imagenet_pack.errors import DecodeError, DecoderUnavailableError
from imagenet_pack.read import crops, decoders, pixels
from imagenet_pack.read.pixels import decode_box
from imagenet_pack.synthetic import natural_image

# CI installs the test extras, nvImageCodec among them: there these tests must run, not skip

FLAVOURS = {
    "420": [],
    "422": [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422],
    "444": [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444],
    "progressive": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
    "restart-markers": [cv2.IMWRITE_JPEG_RST_INTERVAL, 3],
}


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grain = cv2.GaussianBlur(rng.standard_normal((512, 512, 3)).astype(np.float32), (0, 0), 0.7) * 45
    return natural_image(rng, height, width, rng.uniform(-40, 40, 3), grain)


def jpeg(rgb: np.ndarray, params: list[int], grey: bool = False) -> bytes:
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY if grey else cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90, *params])
    assert ok
    return data.tobytes()


def boxes(height: int, width: int, rng: random.Random) -> list[tuple[int, int, int, int]]:
    fixed = [(0, 0, height, width), (0, 0, 1, 1), (height - 1, width - 1, 1, 1), (0, width - 7, height, 7),
             (height - 9, 0, 9, width), (1, 1, height - 2, width - 2), (17, 33, 40, 50)]
    fixed += [crops.random_resized_crop_box(height, width, rng) for _ in range(12)]
    return [b for b in fixed if b[0] + b[2] <= height and b[1] + b[3] <= width]


@pytest.mark.nvimgcodec
@pytest.mark.parametrize("flavour", [*FLAVOURS, "grey"])
@pytest.mark.parametrize("size", [(375, 500), (101, 77)])
def test_region_pixels_equal_opencv_at_every_scale(flavour, size):
    data = jpeg(photo(*size), FLAVOURS.get(flavour, []), grey=flavour == "grey")
    rng = random.Random(1)
    for scale in (1, 2, 4, 8):  # 1: nvImageCodec's region decode; 2-8: OpenCV's reduced decode
        full = decode_rgb(data, "t", scale)
        for top, left, h, w in boxes(*full.shape[:2], rng):
            if scale == 1:
                assert pixels._decode_region_nvimgcodec(data, (top, left, h, w), size) is not None
            for flip in (False, True):
                ours = decode_box(data, (top, left, h, w), scale, size, "t", "nvimgcodec", flip)
                expected = full[top:top + h, left:left + w]
                np.testing.assert_array_equal(ours, expected[:, ::-1] if flip else expected,
                                              err_msg=f"{scale} {top, left, h, w} {flip}")


@pytest.mark.nvimgcodec
def test_cmyk_gives_opencvs_pixels():
    buf = io.BytesIO()
    Image.fromarray(photo(64, 80)).convert("CMYK").save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    np.testing.assert_array_equal(decode_box(data, (3, 5, 40, 50), 1, (64, 80), "t", "nvimgcodec"),
                                  decode_rgb(data, "t")[3:43, 5:55])


@pytest.mark.parametrize("backend", [pytest.param("nvimgcodec", marks=pytest.mark.nvimgcodec), "opencv"])
def test_damaged_bytes_and_bad_boxes_raise_clear_errors(backend):
    data = jpeg(photo(64, 80), [])
    with pytest.raises(DecodeError, match=r"rec 7.*: stored image cannot be decoded"):
        decode_box(b"\xff\xd8" + bytes(500), (0, 0, 8, 8), 1, (8, 8), "rec 7", backend)
    # a box outside the image: the same package error from both backends, naming the image's size
    with pytest.raises(DecodeError, match=r"t: crop box \(top 10, left 10, 60x10\) is not inside the 64x80 image"):
        decode_box(data, (10, 10, 60, 10), 1, (64, 80), "t", backend)
    with pytest.raises(DecodeError, match=r"crop box \(top 0, left 0, 0x10\) is not inside"):
        decode_box(data, (0, 0, 0, 10), 1, (64, 80), "t", backend)
    # a record whose stored size is not the JPEG's: an error, never other rows of the image
    with pytest.raises(DecodeError, match=r"t: the JPEG decodes to 64x80 at 1/1, its record says 40x80"):
        decode_box(data, (0, 0, 8, 8), 1, (40, 80), "t", backend)


@pytest.mark.nvimgcodec
def test_fused_decoders_give_the_same_samples_as_opencv(db_session, monkeypatch):
    calls = []
    real = pixels._decode_region_nvimgcodec
    monkeypatch.setattr(pixels, "_decode_region_nvimgcodec",
                        lambda data, box, size: calls.append(box) or real(data, box, size))
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


@pytest.mark.nvimgcodec
def test_what_nvimgcodec_declines_goes_to_opencv(monkeypatch):
    data = jpeg(photo(64, 80), [])
    monkeypatch.setattr(pixels, "_decode_region_nvimgcodec", lambda data, box, size: None)
    np.testing.assert_array_equal(decode_box(data, (3, 5, 40, 50), 1, (64, 80), "t", "nvimgcodec"),
                                  decode_rgb(data, "t")[3:43, 5:55])

    def broken(data, box, size):
        raise RuntimeError("nvImageCodec failure")

    monkeypatch.setattr(pixels, "_decode_region_nvimgcodec", broken)
    with pytest.raises(pixels.DecodeError, match=r"rec 4 \(nvImageCodec: nvImageCodec failure\): stored image cannot"):
        decode_box(b"\xff\xd8" + bytes(100), (0, 0, 4, 4), 1, (4, 4), "rec 4", "nvimgcodec")


def test_backend_choice_is_checked_and_a_missing_backend_says_what_to_install(monkeypatch):
    with pytest.raises(ValueError, match="unknown decode backend 'pillow'"):
        RandomResizedCropDecoder(224, backend="pillow")
    monkeypatch.setattr(decoders, "NVIMGCODEC_AVAILABLE", True)
    assert RandomResizedCropDecoder(8, backend="auto").backend == "nvimgcodec"
    monkeypatch.setattr(decoders, "NVIMGCODEC_AVAILABLE", False)
    assert RandomResizedCropDecoder(8, backend="auto").backend == "opencv"
    said = r"pip install nvidia-nvimgcodec-cu13 .*pip install -e '\.\[nvimgcodec\]'"
    with pytest.raises(DecoderUnavailableError, match=said):
        CenterCropDecoder(8, backend="nvimgcodec")
