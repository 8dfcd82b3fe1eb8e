"""Images to patch rows: every format, the grid, resize bounds, and hostile input refused early."""

from __future__ import annotations

import base64
import math
import statistics
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image, ImageOps

from museserve.config.preprocess import MediaLimits
from museserve.errors import InvalidArgument
from museserve.preprocess.images import decode_data_url, fit_size, load_image
from tests import media_corpus as mc
from tests.support import call_within

FIELD = "messages[0].content[1].image"
LIMITS = MediaLimits()


def rows_of(features) -> np.ndarray:
    return np.frombuffer(features.rows, dtype=np.float16).reshape(features.num_tokens, features.feature_dim)


@pytest.mark.parametrize("name", [n for n, (_, ok) in mc.corpus().items() if ok])
def test_every_supported_input_decodes(name: str):
    data, _ = mc.corpus()[name]
    features = load_image(data, "application/octet-stream", LIMITS, FIELD)
    rows = rows_of(features)
    assert features.grid[0] * features.grid[1] == features.num_tokens >= 1
    assert features.feature_dim == 3 * 16 * 16
    assert np.isfinite(rows).all() and rows.min() >= -1 and rows.max() <= 1


@pytest.mark.parametrize("name", [n for n, (_, ok) in mc.corpus().items() if not ok])
def test_every_hostile_input_is_refused_with_the_field(name: str):
    data, _ = mc.corpus()[name]
    with pytest.raises(InvalidArgument) as refused:
        load_image(data, "image/png", LIMITS, FIELD)
    assert refused.value.field == FIELD and refused.value.message


def test_grid_shape_and_patch_layout():
    image = mc.pattern(40, 20)
    features = load_image(mc.encode(image, "PNG"), "image/png", LIMITS, FIELD)
    assert (features.width, features.height, features.grid, features.num_tokens) == (40, 20, (2, 3), 6)
    rows = rows_of(features).reshape(2, 3, 16, 16, 3)  # [grid row, grid col, py, px, channel]
    expected = np.asarray(image, dtype=np.float32) * (2 / 255) - 1
    np.testing.assert_allclose(rows[1, 2, 0, :8], expected[16, 32:40], atol=1e-3)  # last column: 8 real pixels
    assert (rows[1, :, 4:] == 0).all() and (rows[:, 2, :, 8:] == 0).all()  # padding beyond the image is 0


def test_large_image_is_downscaled_to_the_token_bound():
    limits = MediaLimits(max_image_tokens=64, image_patch_size=14)
    features = load_image(mc.png(1000, 300), "image/png", limits, FIELD)
    assert features.num_tokens <= 64 and features.feature_dim == 3 * 14 * 14
    assert abs(features.width / features.height - 1000 / 300) < 0.1
    assert fit_size(features.width + 1, round((features.width + 1) * 0.3), 14, 64) != (features.width + 1, 0)


@pytest.mark.parametrize(
    ("width", "height", "patch", "budget"), [(1024, 768, 16, 1024), (5000, 1, 16, 64), (1, 9000, 14, 10), (7, 3, 16, 1)]
)
def test_fit_size_never_upscales_and_fits(width: int, height: int, patch: int, budget: int):
    w, h = fit_size(width, height, patch, budget)
    assert 1 <= w <= width and 1 <= h <= height
    assert math.ceil(w / patch) * math.ceil(h / patch) <= budget


def test_small_image_is_one_padded_patch_not_upscaled():
    features = load_image(mc.png(5, 3), "image/png", LIMITS, FIELD)
    assert (features.width, features.height, features.num_tokens) == (5, 3, 1)


def test_pixel_bound_is_checked_from_the_header():
    limits = MediaLimits(max_image_pixels=1000)
    with pytest.raises(InvalidArgument, match="image is 40x30 pixels; at most 1000 pixels are allowed"):
        load_image(mc.png(40, 30), "image/png", limits, FIELD)


@pytest.mark.parametrize(
    "data", [mc.png_header_only(100_000, 100_000), mc.png_header_only(10_000, 5_000), mc.jpeg_declaring(30_000, 30_000)]
)
def test_bomb_headers_are_refused_fast_without_allocating(data: bytes):
    tracemalloc.start()
    with pytest.raises(InvalidArgument, match="pixels") as refused:
        call_within(5, load_image, data, "image/png", LIMITS, FIELD)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert refused.value.field == FIELD
    # The header was read and no pixel buffer allocated: the smallest of these would take 150 MB.
    # The bound leaves room for what other threads of the test process allocate meanwhile
    # (tracemalloc counts every thread): 1 MiB was once exceeded by 5%.
    assert peak < 16 << 20


def test_byte_bound_is_checked_first():
    with pytest.raises(InvalidArgument, match="bytes"):
        load_image(b"\x00" * 101, "image/png", MediaLimits(max_image_bytes=100), FIELD)


def test_declared_mime_may_disagree_but_the_format_must_be_supported():
    assert load_image(mc.webp(), "image/jpeg", LIMITS, FIELD).num_tokens == 12
    with pytest.raises(InvalidArgument, match="not a PNG, JPEG or WebP image"):
        load_image(mc.gif(), "image/png", LIMITS, FIELD)


def test_exif_orientation_is_applied():
    data = mc.jpeg_with_orientation(40, 20, orientation=6)
    features = load_image(data, "image/jpeg", LIMITS, FIELD)
    assert (features.width, features.height) == (20, 40)
    reference = ImageOps.exif_transpose(Image.open(__import__("io").BytesIO(data))).convert("RGB")
    rows = rows_of(features).reshape(3, 2, 16, 16, 3)
    np.testing.assert_allclose(rows[0, 0, 0, 0], np.asarray(reference)[0, 0] * (2 / 255) - 1, atol=2e-3)


def test_alpha_is_flattened_on_white_and_animation_gives_the_first_frame():
    clear = load_image(mc.fully_transparent_png(), "image/png", LIMITS, FIELD)
    assert (rows_of(clear) == 1).all()
    for fmt in ("PNG", "WEBP"):
        first = rows_of(load_image(mc.animated(fmt), "", LIMITS, FIELD))
        np.testing.assert_allclose(first, 40 * 2 / 255 - 1, atol=2e-3)


def test_sixteen_bit_grey_keeps_its_level():
    rows = rows_of(load_image(mc.png_16bit_gray(32, 32, value=0x8000), "image/png", LIMITS, FIELD))
    np.testing.assert_allclose(rows, 128 * 2 / 255 - 1, atol=2e-3)


def test_digest_is_stable_and_content_sensitive():
    a = load_image(mc.png(seed=1), "image/png", LIMITS, FIELD)
    assert a.digest == load_image(mc.png(seed=1), "image/png", LIMITS, FIELD).digest
    assert a.digest != load_image(mc.png(seed=2), "image/png", LIMITS, FIELD).digest
    assert (
        a.digest == load_image(mc.encode(mc.pattern(64, 48, seed=1), "WEBP", lossless=True), "", LIMITS, FIELD).digest
    )
    segment = a.segment(start=7)
    assert (segment.kind, segment.start, segment.num_tokens, segment.digest) == ("image", 7, a.num_tokens, a.digest)


def test_data_urls():
    data = mc.png()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert decode_data_url(url, FIELD) == (data, "image/png")
    for bad, message in [
        ("data:image/png;base64,!!!notbase64", "not valid base64"),
        ("data:image/png," + "abc", "base64-encoded"),
        ("http://example.com/a.png", "not a data: URL"),
    ]:
        with pytest.raises(InvalidArgument, match=message) as refused:
            decode_data_url(bad, FIELD)
        assert refused.value.field == FIELD
    with pytest.raises(InvalidArgument, match="larger than 100 bytes"):
        decode_data_url(url, FIELD, max_bytes=100)


def test_p50_of_a_1024x768_jpeg():
    data = mc.jpeg(1024, 768)
    times = []
    for _ in range(20):
        started = time.perf_counter()
        features = load_image(data, "image/jpeg", LIMITS, FIELD)
        times.append(time.perf_counter() - started)
    print(f"load_image 1024x768 JPEG -> {features.grid}: p50 {statistics.median(times) * 1e3:.2f} ms")
    assert features.num_tokens <= LIMITS.max_image_tokens
