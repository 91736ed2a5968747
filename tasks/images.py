"""Image helpers (Pillow): sniff, open safely, probe, validate, fit into a byte limit, downscale.

Everything here is plain synchronous CPU work: from async flows call it through
``await asyncio.to_thread(fit_to_byte_limit, data, 204_800)``. Untrusted bytes never crash a run: unknown
formats, decompression bombs and truncated or corrupt files raise ``InputError`` (field "image"). Formats
are decided by content (magic bytes), never by file name. The @task wrappers at the bottom take a batch of
images and report each one as done or rejected, in input order.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from PIL import Image, ImageOps
from prefect import task
from prefect.cache_policies import NO_CACHE

from clients.errors import InputError

DEFAULT_MAX_PIXELS = 64_000_000  # 8000x8000: every phone camera, ~190 MB decoded as RGB
ENCODABLE = ("JPEG", "PNG")
_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees
_CLOSE_ENOUGH = 0.95  # a JPEG within 5% of the byte limit ends the quality search
_PNG_SKIP_FACTOR = 2.0  # skip the (slow) optimised PNG when a fast estimate says it is 2x over the limit

T = TypeVar("T")


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: ``width``/``height`` as displayed (EXIF orientation applied), size in bytes."""

    format: str
    width: int
    height: int
    bytes: int
    mode: str
    orientation: int = 1


@dataclass(frozen=True)
class FittedImage:
    """A re-encoded (or untouched) image with what was done to it.

    ``quality`` is the JPEG quality used (None for PNG and untouched input). ``steps`` lists every encode
    tried, e.g. ``"JPEG q=71 1280x720: 201,344 B"``.
    """

    data: bytes = field(repr=False)
    format: str
    quality: int | None
    width_before: int
    height_before: int
    width: int
    height: int
    bytes_before: int
    bytes_after: int
    steps: tuple[str, ...] = ()
    untouched: bool = False

    @classmethod
    def unchanged(cls, data: bytes, info: ImageInfo) -> FittedImage:
        """The input itself, already within the limits."""
        size = (info.width, info.height)
        return cls(data, info.format, None, *size, *size, len(data), len(data), (), untouched=True)

    @property
    def resized(self) -> bool:
        return (self.width, self.height) != (self.width_before, self.height_before)


@dataclass(frozen=True)
class Rejected:
    """An input of a batch task that was refused, with the reason (an ``InputError`` message)."""

    index: int
    reason: str


# --- opening untrusted bytes ---------------------------------------------------------------------------


def sniff_image_format(data: bytes) -> str:
    """The image format from the magic bytes: JPEG, PNG, GIF, WEBP, TIFF, BMP, AVIF or HEIC.

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
    if load:
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
        value = img.getexif().get(_ORIENTATION_TAG, 1)
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
    img = open_image_safely(data, max_pixels=max_pixels, load=False)
    orientation = _orientation(img)
    width, height = img.size
    if orientation in _SWAPS_AXES:
        width, height = height, width
    # the sniffed name, not img.format: Pillow calls some JPEGs "MPO" (multi-picture, from phones)
    return ImageInfo(sniff_image_format(data), width, height, len(data), img.mode, orientation)


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


# --- re-encoding ---------------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, icc: bytes | None, **params: object) -> bytes:
    buf = io.BytesIO()
    if icc and img.mode in ("RGB", "RGBA"):
        params["icc_profile"] = icc
    img.save(buf, fmt, **params)  # no exif= argument: metadata is not copied
    return buf.getvalue()


def _for_jpeg(img: Image.Image) -> Image.Image:
    """RGB or L; transparency flattened onto white (JPEG has no alpha)."""
    if img.mode in ("RGB", "L"):
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", img.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("L" if img.mode == "1" else "RGB")


def _for_resizing(img: Image.Image) -> Image.Image:
    """A mode that resizes with a real filter (palette and 1-bit images would fall back to nearest)."""
    if img.mode in ("RGB", "RGBA", "L", "LA"):
        return img
    has_alpha = img.mode in ("PA",) or "transparency" in img.info
    return img.convert("RGBA" if has_alpha else ("L" if img.mode == "1" else "RGB"))


def _png_surely_too_big(img: Image.Image, limit: float) -> bool:
    """Estimate the PNG size from 8 thin strips at fast compression, stopping as soon as the running
    estimate passes ``limit``: ~1 ms for a photo, where the real optimised encode takes ~200 ms."""
    width, height = img.size
    strips, rows = 8, 4
    if height < strips * rows * 2:
        return False  # small enough to just try
    scale = height / (strips * rows)
    total = 0
    for i in range(strips):
        top = (height - rows) * i // (strips - 1)
        total += len(_encode(img.crop((0, top, width, top + rows)), "PNG", None, compress_level=1))
        if total * scale > limit:
            return True
    return False


def _size_axis(quality: int) -> float:
    """An axis on which log(JPEG size) is close to linear: -log(libjpeg's quantiser scale + 20)."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality  # IJG quality -> quant table scale, %
    return -math.log(scale + 20)


def _best_jpeg(
    img: Image.Image, max_bytes: int, lo_q: int, hi_q: int, icc: bytes | None, steps: list[str]
) -> tuple[bytes | None, int, int]:
    """Highest JPEG quality in [lo_q, hi_q] that fits, Huffman-optimised.

    Returns ``(data or None, quality, size of the smallest encode)``.
    """
    src = _for_jpeg(img)
    label = f"{img.width}x{img.height}"

    def encode(q: int, optimize: bool = True) -> bytes:
        data = _encode(src, "JPEG", icc, quality=q, optimize=optimize)
        steps.append(f"JPEG q={q}{'' if optimize else ' plain'} {label}: {len(data):,} B")
        return data

    # A plain encode is ~3x cheaper than an optimised one at high quality, and never smaller.
    top = encode(hi_q, optimize=False)
    if len(top) <= max_bytes:
        optimized = encode(hi_q)
        return (optimized if len(optimized) <= len(top) else top), hi_q, len(top)
    best = encode(lo_q)
    if len(best) > max_bytes:
        return None, lo_q, len(best)
    # Invariant: lo fits, hi does not. Model: log(size) is linear in _size_axis(q) (fits Pillow/libjpeg
    # within a few % on photos and text), so interpolating on that axis lands within ~1 quality step.
    # Bisect after 3 steps that did not halve the bracket. Stop once a fit is within 5% of the limit: one
    # quality step is invisible, and each probe costs a full encode.
    lo, hi, size_lo, size_hi = lo_q, hi_q, len(best), len(top)
    poor_steps = 0
    while hi - lo > 1 and size_lo < _CLOSE_ENOUGH * max_bytes:
        if poor_steps >= 3 or size_hi <= size_lo:  # sizes are not strictly monotonic in quality
            q = (lo + hi) // 2
        else:
            frac = math.log(max_bytes / size_lo) / math.log(size_hi / size_lo)
            target = _size_axis(lo) + frac * (_size_axis(hi) - _size_axis(lo))
            q = max((c for c in range(lo + 1, hi) if _size_axis(c) <= target), default=lo + 1)
        width_before = hi - lo
        data = encode(q)
        if len(data) <= max_bytes:
            lo, size_lo, best = q, len(data), data
        else:
            hi, size_hi = q, len(data)
        poor_steps = poor_steps + 1 if (hi - lo) * 2 > width_before else 0
    return best, lo, len(best)


def fit_to_byte_limit(
    data: bytes,
    max_bytes: int,
    *,
    formats: Sequence[str] = ("JPEG", "PNG"),
    min_quality: int = 40,
    max_quality: int = 95,
    scale_step: float = 0.8,
    min_side: int = 16,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FittedImage:
    """Re-encode an image so it is at most ``max_bytes``, losing as little as possible.

    Algorithm:

    1. If the input already fits and its format is in ``formats``, it is returned untouched (EXIF kept),
       once it has been checked to decode.
    2. Otherwise decode it (bomb-checked), turn it upright per EXIF, and at the current resolution:

       - JPEG (optimised Huffman tables): a cheap plain encode at ``max_quality`` first; if too big, encode
         at ``min_quality``; if that fits, search the highest quality that fits by interpolating log(size)
         on an axis where it is nearly linear (bisection as a fallback), stopping once a fit is within 5% of
         the limit: usually 1-3 more encodes.
       - PNG (lossless, ``optimize=True``): tried unless a fast estimate from a few strips says it is more
         than twice the limit (photos), because the real encode of a 1280×720 photo costs ~200 ms.
       - Choice: a PNG that fits wins when it is no bigger than the JPEG, or when the JPEG had to go below
         ``max_quality`` (lossless beats lossy); otherwise the JPEG.

    3. Only if nothing fits at ``min_quality``, downscale by ``min(scale_step, sqrt(max_bytes / smallest))``
       (bytes scale roughly with pixels) and repeat from 2. Below ``min_side`` px, raise ``InputError``.

    The output carries no EXIF (orientation is baked into the pixels); an RGB ICC profile is kept so colours
    stay right. Cost for a 1280×720 camera JPEG of ~400 KB into 204,800 bytes: one decode and 4-6 JPEG
    encodes, 30-50 ms on a 2-core machine.
    """
    formats = tuple(f.upper() for f in formats)
    if not formats or any(f not in ENCODABLE for f in formats):
        raise InputError("formats", f"{formats}", f"a non-empty subset of {ENCODABLE}")
    if not 1 <= min_quality <= max_quality <= 100:
        raise InputError(
            "min_quality", f"{min_quality}..{max_quality}", "1 <= min_quality <= max_quality <= 100"
        )
    if max_bytes < 1:
        raise InputError("max_bytes", f"{max_bytes}", "at least 1")
    if not 0 < scale_step < 1:
        raise InputError("scale_step", f"{scale_step}", "between 0 and 1")

    info = probe_image(data, max_pixels=max_pixels)
    if len(data) <= max_bytes and info.format in formats:
        open_image_safely(data, max_pixels=max_pixels)  # decodes: a truncated file must not slip through
        return FittedImage.unchanged(data, info)
    decoded = open_image_safely(data, max_pixels=max_pixels)
    icc = decoded.info.get("icc_profile") if decoded.mode in ("RGB", "RGBA") else None
    img = _for_resizing(apply_exif_orientation(decoded))  # also makes CMYK/16-bit/palette encodable
    width0, height0 = img.size
    steps: list[str] = []

    def fitted(out: bytes, fmt: str, quality: int | None) -> FittedImage:
        return FittedImage(
            out, fmt, quality, width0, height0, img.width, img.height, len(data), len(out), tuple(steps)
        )

    while True:
        jpeg, quality, smallest = None, max_quality, math.inf
        if "JPEG" in formats:
            jpeg, quality, smallest = _best_jpeg(img, max_bytes, min_quality, max_quality, icc, steps)
        png = None
        if "PNG" in formats:
            if "JPEG" in formats and _png_surely_too_big(img, _PNG_SKIP_FACTOR * max_bytes):
                steps.append(
                    f"PNG skipped {img.width}x{img.height}: estimated over {_PNG_SKIP_FACTOR:g}x the limit"
                )
            else:
                png = _encode(img, "PNG", icc, optimize=True)
                steps.append(f"PNG optimized {img.width}x{img.height}: {len(png):,} B")
                smallest = min(smallest, len(png))
                png = png if len(png) <= max_bytes else None
        if png is not None and (jpeg is None or len(png) <= len(jpeg) or quality < max_quality):
            return fitted(png, "PNG", None)
        if jpeg is not None:
            return fitted(jpeg, "JPEG", quality)
        factor = min(scale_step, math.sqrt(max_bytes / smallest))
        new_size = (
            min(img.width - 1, round(img.width * factor)),
            min(img.height - 1, round(img.height * factor)),
        )
        if min(new_size) < min_side:
            raise InputError(
                "image",
                f"{width0}×{height0} px does not fit in {max_bytes:,} bytes even at {img.width}×{img.height} px",
                f"at most {max_bytes:,} bytes, at least {min_side} px per side",
            )
        img = img.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def downscale_to_max_side(
    data: bytes,
    max_side: int,
    *,
    quality: int = 90,
    format: str = "JPEG",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FittedImage:
    """Shrink an image so its longer side is at most ``max_side`` px, keeping the aspect ratio.

    Returned untouched if already small enough (once checked to decode). Otherwise decoded (JPEG: at
    reduced scale, much faster for big photos), turned upright, resized with Lanczos and encoded as
    ``format`` (JPEG at ``quality`` or optimised PNG), without EXIF.
    """
    fmt = format.upper()
    if fmt not in ENCODABLE:
        raise InputError("format", fmt, f"one of {', '.join(ENCODABLE)}")
    if max_side < 1:
        raise InputError("max_side", f"{max_side}", "at least 1")
    info = probe_image(data, max_pixels=max_pixels)
    if max(info.width, info.height) <= max_side:
        open_image_safely(data, max_pixels=max_pixels)  # decodes: a truncated file must not slip through
        return FittedImage.unchanged(data, info)
    ratio = max_side / max(info.width, info.height)
    stored = (info.height, info.width) if info.orientation in _SWAPS_AXES else (info.width, info.height)
    draft = (math.ceil(stored[0] * ratio), math.ceil(stored[1] * ratio))  # the decoder works on stored axes
    decoded = open_image_safely(data, max_pixels=max_pixels, draft_size=draft)
    icc = decoded.info.get("icc_profile") if decoded.mode in ("RGB", "RGBA") else None
    img = _for_resizing(apply_exif_orientation(decoded))
    target = (max(1, round(info.width * ratio)), max(1, round(info.height * ratio)))
    img = img.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if fmt == "JPEG":
        out, used_quality = _encode(_for_jpeg(img), "JPEG", icc, quality=quality, optimize=True), quality
    else:
        out, used_quality = _encode(img, "PNG", icc, optimize=True), None
    step = f"{fmt} {img.width}x{img.height}: {len(out):,} B"
    return FittedImage(
        out, fmt, used_quality, info.width, info.height, img.width, img.height, len(data), len(out), (step,)
    )


# --- batch tasks ---------------------------------------------------------------------------------------


def _each(images: Sequence[bytes], fn: Callable[[bytes], T]) -> list[T | Rejected]:
    results: list[T | Rejected] = []
    for index, data in enumerate(images):
        try:
            results.append(fn(data))
        except InputError as exc:
            results.append(Rejected(index, str(exc)))
    return results


@task(name="fit-images-to-byte-limit", cache_policy=NO_CACHE)
def fit_images_to_byte_limit(
    images: Sequence[bytes],
    max_bytes: int,
    *,
    formats: Sequence[str] = ("JPEG", "PNG"),
    min_quality: int = 40,
) -> list[FittedImage | Rejected]:
    """Fit a batch of images into ``max_bytes`` each (see ``fit_to_byte_limit``), in input order.

    Example:
        fitted = fit_images_to_byte_limit(snapshots, 204_800)  # Miniviz image limit
        ok = [f for f in fitted if isinstance(f, FittedImage)]
    """
    return _each(images, lambda d: fit_to_byte_limit(d, max_bytes, formats=formats, min_quality=min_quality))


@task(name="downscale-images", cache_policy=NO_CACHE)
def downscale_images(
    images: Sequence[bytes], max_side: int, *, quality: int = 90
) -> list[FittedImage | Rejected]:
    """Shrink a batch of images to at most ``max_side`` px on the longer side (see ``downscale_to_max_side``).

    Example:
        resized = downscale_images(selfies, 2048)
    """
    return _each(images, lambda d: downscale_to_max_side(d, max_side, quality=quality))


@task(name="validate-images", cache_policy=NO_CACHE)
def validate_images(
    images: Sequence[bytes],
    *,
    min_width: int | None = None,
    min_height: int | None = None,
    max_bytes: int | None = None,
    allowed_formats: Sequence[str] | None = None,
) -> list[ImageInfo | Rejected]:
    """Validate a batch of images (see ``validate_image``); each is an ``ImageInfo`` or ``Rejected`` with the reason.

    Example:
        checked = validate_images(selfies, min_width=256, min_height=256, allowed_formats=["JPEG", "PNG"])
    """
    return _each(
        images,
        lambda d: validate_image(
            d,
            min_width=min_width,
            min_height=min_height,
            max_bytes=max_bytes,
            allowed_formats=allowed_formats,
        ),
    )
