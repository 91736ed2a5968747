"""Image helpers (Pillow): sniff, open safely, probe, validate, fit into a byte limit, downscale; batch tasks.

The plain functions live in two modules without Prefect (so worker processes import them fast) and are
re-exported here: ``tasks.image_io`` (opening untrusted bytes: formats by content, bombs, truncation, EXIF
orientation) and ``tasks.image_fit`` (re-encoding: ``fit_to_byte_limit``, ``downscale_to_max_side``). They
are synchronous CPU work: from async code call them in worker processes (Pillow's encoder holds the GIL; the
snapshot harvest's ``FitPool``) or ``asyncio.to_thread`` for a few images. The @task wrappers below take a batch of
images and report each one as done or rejected, in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from clients.errors import InputError
from tasks.image_fit import ENCODABLE, FittedImage, downscale_to_max_side, fit_to_byte_limit
from tasks.image_io import (
    DEFAULT_MAX_PIXELS,
    ImageInfo,
    apply_exif_orientation,
    open_image_safely,
    probe_image,
    sniff_image_format,
    validate_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ENCODABLE",
    "FittedImage",
    "ImageInfo",
    "Rejected",
    "apply_exif_orientation",
    "downscale_images",
    "downscale_to_max_side",
    "fit_images_to_byte_limit",
    "fit_to_byte_limit",
    "open_image_safely",
    "probe_image",
    "sniff_image_format",
    "validate_image",
    "validate_images",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Rejected:
    """An input of a batch task that was refused, with the reason (an ``InputError`` message)."""

    index: int
    reason: str


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
