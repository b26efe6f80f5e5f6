"""The libjpeg-turbo region decoder gives OpenCV's pixels for any box, scale and JPEG flavour."""
from __future__ import annotations

import io
import os
import random

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_pack import CenterCropDecoder, LmdbImageNet, RandomResizedCropDecoder
from imagenet_pack.errors import DecoderUnavailableError
from imagenet_pack.read import crops, decoders, pixels
from imagenet_pack.read.pixels import ROI_AVAILABLE, decode_box, decode_rgb
from imagenet_pack.errors import DecodeError
from imagenet_pack.synthetic import natural_image

# CI sets this so that a broken build of the extension fails instead of skipping
if os.environ.get("IMAGENET_PACK_REQUIRE_ROI") == "1":
    assert ROI_AVAILABLE, "imagenet_pack.read._jpegroi was not built"
pytestmark = pytest.mark.skipif(not ROI_AVAILABLE, reason="libjpeg-turbo region decoder not built")

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


@pytest.mark.parametrize("flavour", [*FLAVOURS, "grey"])
@pytest.mark.parametrize("size", [(375, 500), (101, 77)])
def test_region_pixels_equal_opencv_full_decode(flavour, size):
    data = jpeg(photo(*size), FLAVOURS.get(flavour, []), grey=flavour == "grey")
    rng = random.Random(1)
    for scale in (1, 2, 4, 8):
        full = decode_rgb(data, "t", scale)
        for top, left, h, w in boxes(*full.shape[:2], rng):
            ours = decode_box(data, (top, left, h, w), scale, "t", "roi")
            assert ours.shape == (h, w, 3)
            np.testing.assert_array_equal(ours, full[top:top + h, left:left + w], err_msg=f"{scale} {top, left, h, w}")


def test_cmyk_falls_back_to_opencv():
    buf = io.BytesIO()
    Image.fromarray(photo(64, 80)).convert("CMYK").save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    np.testing.assert_array_equal(decode_box(data, (3, 5, 40, 50), 1, "t", "roi"), decode_rgb(data, "t")[3:43, 5:55])


def test_damaged_bytes_and_bad_boxes_raise_clear_errors():
    data = jpeg(photo(64, 80), [])
    # what libjpeg-turbo refuses goes to OpenCV, the reference; when it refuses too, both reasons are given
    with pytest.raises(DecodeError, match=r"rec 7 \(libjpeg-turbo: .+\): stored image cannot be decoded"):
        decode_box(b"\xff\xd8" + bytes(500), (0, 0, 8, 8), 1, "rec 7", "roi")
    with pytest.raises(DecodeError, match=r"rec 8 \(libjpeg-turbo: .*\): stored image cannot be decoded"):
        decode_box(data[: len(data) // 3], (0, 0, 64, 80), 1, "rec 8", "roi")
    # a box outside the image: the same package error from both backends, naming the image's size
    for roi in ("roi", "opencv"):
        with pytest.raises(DecodeError, match=r"t: crop box \(top 10, left 10, 60x10\) is not inside the 64x80 image"):
            decode_box(data, (10, 10, 60, 10), 1, "t", roi)
        with pytest.raises(DecodeError, match=r"crop box \(top 0, left 0, 0x10\) is not inside"):
            decode_box(data, (0, 0, 0, 10), 1, "t", roi)


def test_what_libjpeg_turbo_refuses_goes_to_opencv(monkeypatch):
    data = jpeg(photo(64, 80), [])

    def refuse(*args):
        raise pixels._jpegroi.Error("Unsupported JPEG data precision 12")

    monkeypatch.setattr(pixels._jpegroi, "decode_region", refuse)
    np.testing.assert_array_equal(decode_box(data, (3, 5, 40, 50), 1, "t", "roi"), decode_rgb(data, "t")[3:43, 5:55])


def test_roi_backend_decoders_equal_opencv_backend(db_session):
    for make in (lambda b: RandomResizedCropDecoder(24, seed=5, backend=b), lambda b: CenterCropDecoder(16, backend=b)):
        ocv = LmdbImageNet(db_session, "train", decoder=make("opencv"))
        roi = LmdbImageNet(db_session, "train", decoder=make("roi"))
        for i in range(len(ocv)):
            assert torch.equal(ocv[(i, 3)][0], roi[(i, 3)][0]), i


def test_backend_choice_is_checked(monkeypatch):
    with pytest.raises(ValueError, match="unknown decode backend 'pillow'"):
        RandomResizedCropDecoder(224, backend="pillow")
    assert RandomResizedCropDecoder(224, backend="auto").backend == "roi"
    monkeypatch.setattr(decoders, "ROI_AVAILABLE", False)
    monkeypatch.setattr(decoders, "NVIMGCODEC_AVAILABLE", False)
    with pytest.raises(DecoderUnavailableError, match="backend='roi': .*libjpeg-turbo's headers"):
        CenterCropDecoder(224, backend="roi")
    assert CenterCropDecoder(224, backend="auto").backend == "opencv"
