"""Encoded images (PNG, JPEG, WebP) to rows of patch features, with every bound checked.

Order matters for hostile input: the byte count is checked first, the format is sniffed
from the magic bytes, then Pillow reads the header only (lazy open) and the declared
width x height is refused before any pixel is decoded. JPEGs are decoded at a reduced
scale (libjpeg's DCT scaling) when the result will be downscaled anyway, and progressive
JPEGs with absurd scan counts are refused, so decode time is bounded by bytes and pixels.

Output layout (the model's contract): the image is resized, aspect kept, to at most
`max_image_tokens` patches of p x p; the grid is ceil(h / p) x ceil(w / p); the right and
bottom edges are padded with 0 (mid grey) up to whole patches; pixels are in [-1, 1];
rows are patches in row-major grid order, each flattened [py][px][channel].
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from museserve.config.preprocess import MediaLimits
from museserve.errors import InvalidArgument
from museserve.messages import MediaSegment

_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WEBP"}
_MAX_JPEG_SCANS = 100  # libjpeg walks every coefficient once per scan; real files have ~10
_TO_FLOAT = (np.arange(256, dtype=np.float32) * (2 / 255) - 1).astype(np.float16)
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = (
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_270,
)


@dataclass(frozen=True, slots=True)
class ImageFeatures:
    rows: bytes  # float16, shape [num_tokens, feature_dim], row-major
    num_tokens: int
    feature_dim: int  # 3 * patch * patch
    grid: tuple[int, int]  # (rows, cols) of patches; rows * cols == num_tokens
    width: int  # after resize, before padding to whole patches
    height: int
    digest: str  # sha256 of the resized RGB pixels and their size

    def segment(self, start: int) -> MediaSegment:
        return MediaSegment("image", start, self.num_tokens, self.feature_dim, self.rows, self.digest)


def sniff_format(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_data_url(url: str, field: str, max_bytes: int | None = None) -> tuple[bytes, str]:
    """`data:[mime][;base64],payload` -> (bytes, mime). Only base64 payloads are accepted."""
    header, comma, payload = url.partition(",")
    if not header.lower().startswith("data:") or not comma:
        raise InvalidArgument("not a data: URL (expected data:<mime>;base64,<data>)", field=field)
    params = header[5:].split(";")
    if "base64" not in (p.strip().lower() for p in params[1:]):
        raise InvalidArgument("data: URLs must be base64-encoded (data:<mime>;base64,...)", field=field)
    payload = "".join(payload.split())
    if max_bytes is not None and len(payload) // 4 * 3 > max_bytes + 2:
        raise InvalidArgument(f"image is larger than {max_bytes} bytes", field=field)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("data: URL payload is not valid base64", field=field) from None
    return data, params[0].strip().lower()


def fit_size(width: int, height: int, patch: int, max_tokens: int) -> tuple[int, int]:
    """The largest size, aspect kept and never above the original, whose grid fits max_tokens."""
    if _tokens(width, height, patch) <= max_tokens:
        return width, height
    long_side, short_side = max(width, height), min(width, height)
    lo, hi = 1, long_side  # tokens grow with the long side: binary search the largest that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _tokens(mid, max(1, round(short_side * mid / long_side)), patch) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    other = max(1, round(short_side * lo / long_side))
    return (lo, other) if width >= height else (other, lo)


def _tokens(width: int, height: int, patch: int) -> int:
    return math.ceil(width / patch) * math.ceil(height / patch)


def load_image(data: bytes, mime_type: str, limits: MediaLimits, field: str) -> ImageFeatures:
    if len(data) > limits.max_image_bytes:
        raise InvalidArgument(f"image is {len(data)} bytes; at most {limits.max_image_bytes} are accepted", field=field)
    fmt = sniff_format(data)
    if fmt is None:
        declared = f" (declared {mime_type})" if mime_type else ""
        raise InvalidArgument(f"not a PNG, JPEG or WebP image{declared}", field=field)
    if fmt == "JPEG" and data.count(b"\xff\xda") > _MAX_JPEG_SCANS:
        raise InvalidArgument(f"JPEG has more than {_MAX_JPEG_SCANS} scans", field=field)
    _cover_pillow_bomb_limit(limits.max_image_pixels)
    try:
        return _decode(data, fmt, limits, field)
    except InvalidArgument:
        raise
    except Image.DecompressionBombError:
        raise InvalidArgument(
            f"image declares more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels; "
            f"at most {limits.max_image_pixels} pixels are allowed",
            field=field,
        ) from None
    except Exception:  # Pillow signals bad input with many types (OSError, SyntaxError, ValueError, ...)
        raise InvalidArgument("image data is corrupt or truncated", field=field) from None


def _cover_pillow_bomb_limit(max_pixels: int) -> None:
    """Pillow refuses images over 2x its global limit at open; ours is checked first and must win.
    Only ever raises the global, so other users of Pillow keep at least their protection."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _decode(data: bytes, fmt: str, limits: MediaLimits, field: str) -> ImageFeatures:
    image = Image.open(io.BytesIO(data), formats=[fmt])  # header only; pixels are read at load()
    if _FORMATS.get(image.format or "") != fmt:
        raise InvalidArgument("not a PNG, JPEG or WebP image", field=field)
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidArgument(f"image is {width}x{height} pixels", field=field)
    if width * height > limits.max_image_pixels:
        raise InvalidArgument(
            f"image is {width}x{height} pixels; at most {limits.max_image_pixels} pixels are allowed", field=field
        )
    transpose = _ORIENTATION.get(image.getexif().get(0x0112, 1))
    swap = transpose in _SWAPS_SIDES
    p = limits.image_patch_size
    out_w, out_h = fit_size(height if swap else width, width if swap else height, p, limits.max_image_tokens)
    stored_w, stored_h = (out_h, out_w) if swap else (out_w, out_h)
    if fmt == "JPEG":
        image.draft(image.mode, (stored_w, stored_h))  # decodes at 1/2, 1/4 or 1/8 scale, never below the target
    image.load()
    rgb = _to_rgb(image)
    if rgb.size != (stored_w, stored_h):
        rgb = rgb.resize((stored_w, stored_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if transpose is not None:
        rgb = rgb.transpose(transpose)
    pixels = np.asarray(rgb, dtype=np.uint8)  # [out_h, out_w, 3]
    digest = hashlib.sha256(f"{out_w}x{out_h}:".encode() + pixels.tobytes()).hexdigest()
    grid_rows, grid_cols = math.ceil(out_h / p), math.ceil(out_w / p)
    padded = np.zeros((grid_rows * p, grid_cols * p, 3), dtype=np.float16)
    padded[:out_h, :out_w] = _TO_FLOAT[pixels]
    patches = padded.reshape(grid_rows, p, grid_cols, p, 3).transpose(0, 2, 1, 3, 4)
    rows = np.ascontiguousarray(patches).reshape(grid_rows * grid_cols, 3 * p * p)
    return ImageFeatures(
        rows=rows.tobytes(),
        num_tokens=grid_rows * grid_cols,
        feature_dim=3 * p * p,
        grid=(grid_rows, grid_cols),
        width=out_w,
        height=out_h,
        digest=digest,
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded mode to 8-bit RGB; transparency is composited over white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grey: keep the high byte, not a clip
        wide = np.asarray(image, dtype=np.int64)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
