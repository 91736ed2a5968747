"""Hostile inputs, generated at test time (nothing big is committed): broken and oversized images, and the
strings that break naive code (control characters, bidi overrides, huge text, path traversal).

The image generators are cheap however large the *decoded* image: a PNG of a constant 1-bit image is mostly
zeros, which deflate shrinks about 1000:1, so a 20,000×20,000 image is ~50 KB and a 40,000×40,000
decompression bomb (1.6 billion pixels, ~4.8 GB as RGB) ~200 KB.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

from PIL import Image

from tests.images import jpeg_bytes

# Names and label values that have broken real pipelines.
HOSTILE_NAMES = {
    "accents": "Caméra Entrée Nord",
    "cjk": "温度センサー 北",
    "emoji": "cam 📷🔥",
    "nul": "cam\x00era",
    "escape": "\x1b[31mred\x1b[0m",
    "newline": "line1\nline2",
    "tab_cr": "a\tb\rc",
    "bidi_override": "\u202egpj.exe",
    "zero_width": "ca\u200bm",
    "path_traversal": "../../etc/passwd",
    "backslashes": "..\\..\\windows",
    "sql": "'; DROP TABLE devices; --",
    "html": "<script>alert(1)</script>",
    "long": "x" * 5000,
    "blank": "   ",
}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def constant_png(width: int, height: int) -> bytes:
    """A valid, complete 1-bit grayscale PNG of ``width``×``height`` black pixels, built without Pillow."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    rows_per_block = max(1, (1 << 20) // len(row))
    deflate = zlib.compressobj(9)
    parts = []
    for start in range(0, height, rows_per_block):
        parts.append(deflate.compress(row * min(rows_per_block, height - start)))
    parts.append(deflate.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


@functools.cache
def decompression_bomb_png() -> bytes:
    """~200 KB that decode to 40,000×40,000 pixels."""
    return constant_png(40_000, 40_000)


@functools.cache
def huge_png() -> bytes:
    """A real 20,000×20,000 PNG (~50 KB)."""
    return constant_png(20_000, 20_000)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims ``width``×``height``: the scan data is far too short."""
    data = bytearray(jpeg_bytes(64, 64))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def truncated_jpeg() -> bytes:
    """A real 320×320 JPEG cut in the middle of its scan data."""
    data = jpeg_bytes(320, 320, text="truncated")
    return data[: len(data) // 2]


def tiny_png(width: int = 1, height: int = 1) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 150, 120)).save(buf, "PNG")
    return buf.getvalue()


def gif_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), (10, 20, 30)).save(buf, "GIF")
    return buf.getvalue()


def selfie(seed: int, size: int = 320) -> bytes:
    """A valid image Haut accepts (≥ 256×256); ``seed`` makes the bytes distinct."""
    return jpeg_bytes(size, size, text=f"selfie {seed}")
