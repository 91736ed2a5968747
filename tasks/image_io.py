"""Opening untrusted image bytes with Pillow: sniff the format, refuse bombs, probe, validate, turn upright.

Plain synchronous functions with no Prefect import, so worker processes (the snapshot harvest's ``FitPool``) load them fast.
Untrusted bytes never crash a run: unknown formats, decompression bombs and truncated or corrupt files raise
``InputError`` (field "image"). Formats are decided by content (magic bytes), never by file name.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageOps

from clients.errors import InputError

DEFAULT_MAX_PIXELS = 64_000_000  # 8000x8000: every phone camera, ~190 MB decoded as RGB
ORIENTATION_TAG = 0x0112
SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: ``width``/``height`` as displayed (EXIF orientation applied), size in bytes."""

    format: str
    width: int
    height: int
    bytes: int
    mode: str
    orientation: int = 1


# --- opening untrusted bytes ---------------------------------------------------------------------------


def sniff_image_format(data: bytes) -> str:
    """The image format from the magic bytes: JPEG, PNG, GIF, WEBP, TIFF, BMP, AVIF, HEIC or PSD (PSD/PSB).

    Raises ``InputError`` for empty or unrecognised content.
    """
    head = bytes(data[:16])
    if not head:
        raise InputError("image", "empty (0 bytes)")
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:2] == b"BM" and len(data) >= 26:
        return "BMP"
    if head[:4] == b"8BPS" and head[4:6] in (b"\x00\x01", b"\x00\x02"):  # Photoshop: PSD (1), PSB (2)
        return "PSD"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC"
    raise InputError("image", f"not a recognised image format (starts with {head[:8].hex()})")


def _decodable() -> set[str]:
    return {"JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "AVIF"} & set(Image.OPEN)


def _pixel_cap(max_pixels: int) -> int:
    # Pillow warns past MAX_IMAGE_PIXELS and fails past twice that; we treat its warning as a rejection too.
    limit = Image.MAX_IMAGE_PIXELS
    return min(max_pixels, limit) if limit else max_pixels


def open_image_safely(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    load: bool = True,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Open untrusted bytes with Pillow, refusing decompression bombs before any pixel is decoded.

    The header's size is checked against ``max_pixels`` (and Pillow's own ``MAX_IMAGE_PIXELS``) first;
    ``load=True`` then decodes, so truncated or corrupt data is reported here as ``InputError`` rather than
    later. ``draft_size`` lets the JPEG decoder downscale by 1/2 to 1/8 while decoding (much faster for huge
    photos); the result is at least that size.
    """
    fmt = sniff_image_format(data)
    Image.init()
    if fmt not in Image.OPEN:  # e.g. HEIC, or AVIF in a Pillow built without libavif
        raise InputError(
            "image", f"{fmt} cannot be decoded here", f"one of {', '.join(sorted(_decodable()))}"
        )
    cap = _pixel_cap(max_pixels)
    try:
        # Only Image.open runs under the filter: it reads the header, which is where Pillow's check fires.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            "image", f"{fmt} declares too many pixels (decompression bomb)", f"at most {cap:,} pixels"
        ) from None
    except Exception as exc:  # Pillow raises a zoo of types (OSError, SyntaxError, struct.error...)
        raise InputError("image", f"unreadable {fmt}: {exc}") from None
    width, height = img.size
    if width * height > cap:
        raise InputError(
            "image", f"{width}×{height} px = {width * height:,} pixels", f"at most {cap:,} pixels"
        )
    if width < 1 or height < 1:
        raise InputError("image", f"{width}×{height} px", "at least 1×1")
    if draft_size and fmt == "JPEG":
        img.draft(img.mode, draft_size)
    return load_pixels(img, fmt) if load else img


def load_pixels(img: Image.Image, fmt: str) -> Image.Image:
    """Decode an image opened with ``load=False`` (``fmt``: its sniffed format, for the message); truncated
    or corrupt data raises ``InputError``."""
    try:
        img.load()
    except Exception as exc:
        raise InputError("image", f"truncated or corrupt {fmt}: {exc}") from None
    return img


def _orientation(img: Image.Image) -> int:
    # PNG may keep EXIF after the pixel data, and reading it would decode the image: only trust early EXIF.
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        value = img.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # malformed EXIF: keep the pixels as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_exif_orientation(img: Image.Image) -> Image.Image:
    """The image turned upright per its EXIF orientation tag (tag removed); the same image if already upright."""
    if _orientation(img) == 1:
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF: keep the pixels as stored
        return img


def probe_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Format, displayed size, byte count and mode from the header alone (no pixel decoding).

    Rejects unknown formats and decompression bombs like ``open_image_safely``; truncated pixel data is
    only detected by decoding (``validate_image(..., decode=True)``).
    """
    return probe_and_open(data, max_pixels=max_pixels)[0]


def probe_and_open(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[ImageInfo, Image.Image]:
    """``probe_image`` and the opened, not yet decoded image (``load_pixels`` decodes it): one header parse
    for callers that need both."""
    img = open_image_safely(data, max_pixels=max_pixels, load=False)
    orientation = _orientation(img)
    width, height = img.size
    if orientation in SWAPS_AXES:
        width, height = height, width
    # the sniffed name, not img.format: Pillow calls some JPEGs "MPO" (multi-picture, from phones)
    return ImageInfo(sniff_image_format(data), width, height, len(data), img.mode, orientation), img


def validate_image(
    data: bytes,
    *,
    min_width: int | None = None,
    min_height: int | None = None,
    max_bytes: int | None = None,
    allowed_formats: Sequence[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode: bool = True,
) -> ImageInfo:
    """Check an image against documented limits; return its ``ImageInfo`` or raise ``InputError``.

    Messages name the problem and the limit, e.g. ``image: 200×180 px (at least 256×256)`` or
    ``image: 312,345 bytes (at most 204,800 bytes)``. Sizes are as displayed (EXIF orientation applied).
    ``decode=True`` also decodes the pixels, catching truncated files (a few ms for 1280×720).
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise InputError("image", f"{len(data):,} bytes", f"at most {max_bytes:,} bytes")
    fmt = sniff_image_format(data)
    if allowed_formats is not None and fmt not in allowed_formats:
        raise InputError("image", f"format {fmt}", f"one of {', '.join(allowed_formats)}")
    info = probe_image(data, max_pixels=max_pixels)
    too_narrow = min_width is not None and info.width < min_width
    too_low = min_height is not None and info.height < min_height
    if too_narrow or too_low:
        if min_width is not None and min_height is not None:
            limit = f"at least {min_width}×{min_height}"
        elif min_width is not None:
            limit = f"at least {min_width} px wide"
        else:
            limit = f"at least {min_height} px high"
        raise InputError("image", f"{info.width}×{info.height} px", limit)
    if decode:
        open_image_safely(data, max_pixels=max_pixels)
    return info
