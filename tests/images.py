"""Small real images made with Pillow for tests."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def jpeg_bytes(width: int = 320, height: int = 240, quality: int = 85, text: str = "test") -> bytes:
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    ImageDraw.Draw(img).text((10, 10), text, fill=(255, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(width: int = 64, height: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def padded_jpeg(size: int) -> bytes:
    """A valid JPEG of exactly ``size`` bytes (trailing bytes after EOI are ignored by decoders)."""
    data = jpeg_bytes()
    if len(data) > size:
        raise ValueError("size too small for the base JPEG")
    return data + b"\0" * (size - len(data))
