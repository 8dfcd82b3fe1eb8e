"""Valid and hostile image bytes, built in memory with Pillow (no files on disk).

Shared by the image tests, the preprocessor tests and the fuzz corpus. Every builder is
deterministic: the same arguments give the same bytes. `corpus()` names one of each.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pattern(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A gradient with a seeded speckle: distinct content for each seed, smooth enough for JPEG."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    r = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    b = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
    rgb = Image.fromarray(np.stack([r, g, b], axis=-1), "RGB")
    if mode == "RGBA" or mode == "LA":
        alpha = Image.fromarray((x * 255 // max(width - 1, 1)).astype(np.uint8)[::-1, ::-1].copy(), "L")
        base = rgb if mode == "RGBA" else rgb.convert("L")
        base.putalpha(alpha)
        return base
    return rgb.convert(mode)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def png(width: int = 64, height: int = 48, mode: str = "RGB", seed: int = 0) -> bytes:
    return encode(pattern(width, height, mode, seed), "PNG")


def jpeg(
    width: int = 64, height: int = 48, mode: str = "RGB", seed: int = 0, quality: int = 90, progressive: bool = False
) -> bytes:
    return encode(pattern(width, height, mode, seed), "JPEG", quality=quality, progressive=progressive)


def webp(width: int = 64, height: int = 48, mode: str = "RGB", seed: int = 0, lossless: bool = False) -> bytes:
    return encode(pattern(width, height, mode, seed), "WEBP", lossless=lossless, quality=90)


def png_16bit_gray(width: int = 32, height: int = 24, value: int = 0x8000) -> bytes:
    return encode(Image.new("I;16", (width, height), value), "PNG")


def png_palette_transparent(width: int = 32, height: int = 24) -> bytes:
    """A palette PNG whose index 0 is fully transparent (tRNS chunk)."""
    image = Image.new("P", (width, height), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    image.paste(1, (0, 0, width // 2, height))
    return encode(image, "PNG", transparency=0)


def fully_transparent_png(width: int = 32, height: int = 32) -> bytes:
    return encode(Image.new("RGBA", (width, height), (0, 0, 0, 0)), "PNG")


def animated(fmt: str, width: int = 32, height: int = 32, frames: int = 3) -> bytes:
    """An animated PNG (APNG) or WebP; frame i is a flat grey of level 40 * (i + 1)."""
    images = [Image.new("RGB", (width, height), (40 * (i + 1),) * 3) for i in range(frames)]
    return encode(images[0], fmt, save_all=True, append_images=images[1:], duration=100, loop=0, lossless=True)


def jpeg_with_orientation(width: int = 40, height: int = 20, orientation: int = 6) -> bytes:
    """A landscape JPEG whose EXIF says to rotate it (6: 90 degrees clockwise -> portrait)."""
    image = pattern(width, height)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height but whose pixel data is one empty zlib stream:
    a decompression bomb's header without the bomb. Decoding it for real would need
    width * height * 3 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_MAGIC + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 frame header patched to declare width x height."""
    data = bytearray(jpeg(16, 16))
    at = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def webp_declaring(width: int, height: int) -> bytes:
    """A VP8X (extended) WebP header declaring a width x height canvas (up to 2**24 a side)."""
    flags = b"\x00\x00\x00\x00"
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    vp8x = b"VP8X" + struct.pack("<I", 10) + flags + canvas
    body = b"WEBP" + vp8x + webp(16, 16)[12:]  # the small image's own VP8 chunk follows
    return b"RIFF" + struct.pack("<I", len(body)) + body


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * keep))]


def wrong_magic(data: bytes) -> bytes:
    return b"\x00" * 8 + data[8:]


def corrupt_middle(data: bytes, seed: int = 0) -> bytes:
    """Overwrites bytes in the second half (header intact, payload damaged)."""
    rng = np.random.default_rng(seed)
    damaged = bytearray(data)
    start = len(data) // 2
    damaged[start : start + 64] = rng.integers(0, 256, size=len(damaged[start : start + 64]), dtype=np.uint8).tobytes()
    return bytes(damaged)


def gif(width: int = 16, height: int = 16) -> bytes:
    return encode(pattern(width, height), "GIF")


def bmp(width: int = 16, height: int = 16) -> bytes:
    return encode(pattern(width, height), "BMP")


def corpus() -> dict[str, tuple[bytes, bool]]:
    """name -> (bytes, whether a PNG/JPEG/WebP loader with the default limits must accept it)."""
    return {
        "png_rgb": (png(), True),
        "png_rgba": (png(mode="RGBA"), True),
        "png_gray": (png(mode="L"), True),
        "png_la": (png(mode="LA"), True),
        "png_16bit": (png_16bit_gray(), True),
        "png_palette_trns": (png_palette_transparent(), True),
        "png_1x1": (png(1, 1), True),
        "apng": (animated("PNG"), True),
        "jpeg_rgb": (jpeg(), True),
        "jpeg_gray": (jpeg(mode="L"), True),
        "jpeg_cmyk": (jpeg(mode="CMYK"), True),
        "jpeg_progressive": (jpeg(progressive=True), True),
        "jpeg_exif_rotated": (jpeg_with_orientation(), True),
        "webp_lossy": (webp(), True),
        "webp_lossless_rgba": (webp(mode="RGBA", lossless=True), True),
        "webp_animated": (animated("WEBP"), True),
        "png_bomb_header": (png_header_only(100_000, 100_000), False),
        "png_zero_size": (png_header_only(0, 0), False),
        "jpeg_bomb_header": (jpeg_declaring(60_000, 60_000), False),
        "webp_bomb_header": (webp_declaring(16_000_000, 16_000_000), False),
        "png_truncated": (truncated(png(128, 128)), False),
        "jpeg_truncated": (truncated(jpeg(128, 128), 0.3), False),
        "webp_truncated": (truncated(webp(128, 128)), False),
        "png_wrong_magic": (wrong_magic(png()), False),
        "png_corrupt": (corrupt_middle(png(128, 128)), False),
        "gif": (gif(), False),
        "bmp": (bmp(), False),
        "empty": (b"", False),
        "garbage": (bytes(range(256)) * 4, False),
    }
