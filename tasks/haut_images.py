"""Images for Haut (blocking: run in threads): read a local path or s3:// URI, validate by content, turn
upright, optionally shrink.

Haut takes a decodable JPEG or PNG of at least 256×256 px and at most 30 MiB (docs/service-api-facts.md §4.13). Untouched
images are sent byte for byte; an EXIF orientation is applied to the pixels (tag removed) so Haut sees the
face upright; ``max_side`` shrinks bigger photos.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from clients.errors import InputError, NotFoundError
from clients.haut import MAX_IMAGE_BYTES, MIN_IMAGE_SIDE, check_image
from tasks.images import (
    apply_exif_orientation,
    downscale_to_max_side,
    open_image_safely,
    validate_image,
)
from tasks.storage import BucketRef, get_bytes, parse_s3_uri

MAX_READ_BYTES = 256 * 1024 * 1024  # never read more than this into memory (Haut takes ≤ 30 MiB anyway)
JPEG_QUALITY = 95  # re-encoding after an EXIF rotation or a downscale
_STARTS_WITH = re.compile(r" \(starts with [0-9a-f]*\)")  # the first bytes of a non-image (could be text)


class Prepared(NamedTuple):
    data: bytes
    format: str
    width: int
    height: int
    sha256: str  # of the input
    uploaded_sha256: str
    transform: str | None


def _encode(img: Image.Image, fmt: str, icc: bytes | None) -> bytes:
    buf = io.BytesIO()
    params: dict[str, Any] = {"icc_profile": icc} if icc and img.mode in ("RGB", "RGBA") else {}
    if fmt == "JPEG":
        if img.mode not in ("RGB", "L", "CMYK"):
            img = img.convert("RGB")
        img.save(buf, "JPEG", quality=JPEG_QUALITY, **params)
    else:
        img.save(buf, "PNG", **params)
    return buf.getvalue()


def prepare_image(data: bytes, max_side: int | None = None) -> Prepared:
    """Validate an image for Haut and make it upright (and at most ``max_side`` px) — ``InputError`` if unusable.

    Checks by content: a decodable JPEG or PNG, at least 256×256 px as displayed; at most 30 MiB as sent.
    An EXIF orientation is applied to the pixels (the tag removed); ``max_side`` shrinks larger images.
    Untouched images are sent byte for byte.
    """
    info = validate_image(
        data,
        min_width=MIN_IMAGE_SIDE,
        min_height=MIN_IMAGE_SIDE,
        max_bytes=None if max_side else MAX_IMAGE_BYTES,
        allowed_formats=("JPEG", "PNG"),
        decode=False,  # decoded below, once, by whichever step needs the pixels
    )
    out, steps = data, []
    if max_side and max(info.width, info.height) > max_side:
        fitted = downscale_to_max_side(data, max_side, quality=JPEG_QUALITY, format=info.format)
        out = fitted.data
        if info.orientation != 1:
            steps.append(f"EXIF orientation {info.orientation} applied")
        steps.append(f"downscaled {info.width}x{info.height} to {fitted.width}x{fitted.height}")
    elif info.orientation != 1:
        decoded = open_image_safely(data)
        icc = decoded.info.get("icc_profile")
        out = _encode(apply_exif_orientation(decoded), info.format, icc)
        steps.append(f"EXIF orientation {info.orientation} applied")
    else:
        # Sent as is: prove it decodes. A JPEG is decoded at 1/8 scale, which still reads all of its
        # entropy-coded data (truncation and corruption show) for about a third of the CPU.
        open_image_safely(data, draft_size=(1, 1))
    final = check_image(out)  # the documented limits, on what is actually sent
    sha_in = hashlib.sha256(data).hexdigest()
    sha_out = sha_in if out is data else hashlib.sha256(out).hexdigest()
    width, height = (final.width, final.height) if final.width else (info.width, info.height)
    return Prepared(out, final.format, width, height, sha_in, sha_out, "; ".join(steps) or None)


def read_error(exc: Exception, source: str = "") -> tuple[str, str]:
    """``(status, reason)`` for an image that could not be read or prepared; never names the path (it may hold
    a subject's name: a check quoting ``source`` or its S3 key says "the path" instead) nor quotes the content."""
    if isinstance(exc, InputError):
        reason = _STARTS_WITH.sub("", str(exc))
        key = source[len("s3://") :].partition("/")[2] if source.startswith("s3://") else ""
        for quoted in {repr(x) for x in (source, key) if x}:
            reason = reason.replace(quoted, "the path")
        return "rejected", reason
    if isinstance(exc, FileNotFoundError | NotFoundError):
        return "rejected", "file not found"
    if isinstance(exc, IsADirectoryError):
        return "rejected", "not a file"
    if isinstance(exc, PermissionError):
        return "rejected", "permission denied reading the file"
    return "failed", f"could not read the image ({type(exc).__name__})"


def read_image_bytes(source: str, s3_client: Any) -> bytes:
    """The bytes of one input image (a local path or an ``s3://`` URI); blocking: call it from a thread."""
    if source.startswith("s3://"):
        if s3_client is None:
            raise InputError("source", "s3:// images need an S3 client (s3_bucket_block)")
        bucket, key = parse_s3_uri(source, field="image")
        return get_bytes(BucketRef(s3_client, bucket), key)
    size = os.path.getsize(source)
    if size > MAX_READ_BYTES:
        raise InputError("image", f"{size:,} bytes", f"at most {MAX_READ_BYTES:,} bytes read")
    return Path(source).read_bytes()
