"""Re-encoding images with Pillow: fit into a byte limit losing as little as possible, or shrink to a side.

Plain synchronous CPU work with no Prefect import. Pillow's JPEG encoder holds the GIL, so two threads never
encode at once and an encoding thread starves the event loop: for many images use a process pool
(the snapshot harvest's ``FitPool``); for a few, ``await asyncio.to_thread(fit_to_byte_limit, data, 204_800)``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from clients.errors import InputError
from tasks.image_io import (
    DEFAULT_MAX_PIXELS,
    SWAPS_AXES,
    ImageInfo,
    apply_exif_orientation,
    load_pixels,
    open_image_safely,
    probe_and_open,
    probe_image,
)

ENCODABLE = ("JPEG", "PNG")
CLOSE_ENOUGH = 0.97  # a fitting JPEG within 3% of the limit ends the search: one quality step is invisible
TRY_NEXT_MARGIN = 1.01  # the next quality up is encoded for real unless predicted more than 1% over the limit
SURELY_TOO_BIG = 1.25  # at min quality, a sample predicting this much over the limit downscales at once
SAMPLE_BAND = 16  # rows per sampled band: one JPEG block row (4:2:0 chroma)
SAMPLE_EVERY = 8  # one band in 8 makes the sample: an encode of it costs ~1/8 of the whole
_DEFAULT_SLOPE = 1.2  # d log(size) / d _size_axis(q) of typical photos, for the first extrapolation only
_PNG_SKIP_FACTOR = 2.0  # skip the (slow) optimised PNG when a fast estimate says it is 2x over the limit
# libjpeg's standard luminance quantisation table (quality 50), summed: the input's own table over this is
# its quality scale. A size guessed from it alone is off by up to ~2x either way on photos, so it only
# decides how far to shrink at decode time when even this much bigger would still be half size or less.
_STD_LUMA_SUM = 3688
_GUESS_MARGIN = 2.5


@dataclass(frozen=True)
class FittedImage:
    """A re-encoded (or untouched) image with what was done to it.

    ``quality`` is the JPEG quality used (None for PNG and untouched input). ``steps`` lists every encode
    tried, e.g. ``"JPEG q=71 1280x720: 201,344 B"`` (whole image) or ``"JPEG q=71 sample 1280x96: 24,010 B"``
    (the rows used to predict sizes).
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


# --- encoders ------------------------------------------------------------------------------------------


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
    """Estimate the PNG size from 6 two-row strips at fast compression, stopping as soon as the running
    estimate passes ``limit``: ~0.4 ms for a photo (two or three strips), where the real optimised encode
    takes ~200 ms. Few rows sampled means few compressed bytes needed to pass the (2x) limit."""
    width, height = img.size
    strips, rows = 6, 2
    if height < strips * rows * 2:
        return False  # small enough to just try
    scale = height / (strips * rows)
    total = 0
    for i in range(strips):
        top = min(height - rows, (2 * i + 1) * height // (2 * strips))  # strip centres, off the edges
        total += len(_encode(img.crop((0, top, width, top + rows)), "PNG", None, compress_level=1))
        if total * scale > limit:
            return True
    return False


# --- the JPEG quality search ---------------------------------------------------------------------------


def _size_axis(quality: int) -> float:
    """An axis on which log(JPEG size) is close to linear: -log(libjpeg's quantiser scale + 20)."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality  # IJG quality -> quant table scale, %
    return -math.log(scale + 20)


def _row_sample(img: Image.Image) -> tuple[Image.Image | None, float]:
    """One band of ``SAMPLE_BAND`` rows in ``SAMPLE_EVERY``, stacked, and the image/sample height ratio.

    JPEG codes each block row almost independently, so the sample's size times the ratio predicts the
    whole image's within a few % (and exactly enough once calibrated by one real encode). None for images
    too short to sample.
    """
    width, height = img.size
    bands = height // (SAMPLE_BAND * SAMPLE_EVERY)
    if bands < 4:
        return None, 1.0
    sample = Image.new(img.mode, (width, bands * SAMPLE_BAND))
    step = height / bands  # spread over the whole height, off any fixed period of the content
    for i in range(bands):
        top = min(height - SAMPLE_BAND, round((i + 0.5) * step) // SAMPLE_BAND * SAMPLE_BAND)
        sample.paste(img.crop((0, top, width, top + SAMPLE_BAND)), (0, i * SAMPLE_BAND))
    return sample, height / sample.height


class _JpegSizes:
    """Optimised JPEG encodes of one image: real ones (the whole image, kept) and cheap predictions.

    ``predict(q)`` is the sample's encoded size times the height ratio, times the real/predicted ratio of
    the nearest quality encoded for real (1 before any): each real encode makes the next predictions exact
    to ~1%.
    """

    def __init__(self, img: Image.Image, icc: bytes | None, steps: list[str]) -> None:
        self.src = _for_jpeg(img)
        self.icc = icc
        self.steps = steps
        self.label = f"{img.width}x{img.height}"
        self.sample, self.ratio = _row_sample(self.src)
        self.real: dict[int, bytes] = {}
        self._sampled: dict[int, int] = {}

    def encode(self, q: int) -> bytes:
        if q not in self.real:
            data = _encode(self.src, "JPEG", self.icc, quality=q, optimize=True)
            self.steps.append(f"JPEG q={q} {self.label}: {len(data):,} B")
            self.real[q] = data
        return self.real[q]

    def _sample_size(self, q: int) -> int:
        assert self.sample is not None
        if q not in self._sampled:
            size = len(_encode(self.sample, "JPEG", None, quality=q, optimize=True))
            self.steps.append(f"JPEG q={q} sample {self.sample.width}x{self.sample.height}: {size:,} B")
            self._sampled[q] = size
        return self._sampled[q]

    def predict(self, q: int) -> float:
        if q in self.real:
            return len(self.real[q])
        if self.sample is None:  # small image: encoding it whole is as cheap as a sample
            return len(self.encode(q))
        estimate = self._sample_size(q) * self.ratio
        if self.real:
            nearest = min(self.real, key=lambda r: (abs(r - q), -r))
            estimate *= len(self.real[nearest]) / (self._sample_size(nearest) * self.ratio)
        return estimate


def _highest_fitting(
    size_at: Callable[[int], float], lo: int, hi: int, limit: float, start: int, *, hinted: bool = False
) -> int | None:
    """Highest q in [lo, hi] with ``size_at(q) <= limit`` (None if not even ``lo``), in few probes.

    Sizes grow with quality, nearly linearly in log(size) against ``_size_axis(q)``: each probe after the
    first is a secant step on that axis (the first extrapolates with a typical slope), so it usually lands
    within a step of the answer; bisection takes over after 2 steps that did not halve the bracket, and the
    bracket keeps it right where sizes are not monotonic. ``hinted``: ``start`` is a likely answer, so its
    neighbour is probed second (two probes when the hint is right).
    """
    fit, over = lo - 1, hi + 1  # q known to fit (lo - 1: none yet), q known to be over (hi + 1: none yet)
    seen: dict[int, float] = {}
    q, poor = min(max(start, lo), hi), 0
    while True:
        seen[q] = size_at(q)
        width_before = over - fit
        if seen[q] <= limit:
            fit = q
        else:
            over = q
        if over - fit <= 1:
            return fit if fit >= lo else None
        poor = poor + 1 if (over - fit) * 2 > width_before else 0
        if hinted and len(seen) == 1:
            q = q + 1 if q == fit else q - 1
            continue
        if poor >= 2:
            q = (fit + over) // 2
            continue
        if fit in seen and over in seen and seen[over] > seen[fit]:
            slope = math.log(seen[over] / seen[fit]) / (_size_axis(over) - _size_axis(fit))
        else:
            slope = _DEFAULT_SLOPE
        known = fit if fit in seen else over
        target = _size_axis(known) + math.log(limit / seen[known]) / slope
        q = max((c for c in range(fit + 1, over) if _size_axis(c) <= target), default=fit + 1)


def _best_jpeg(
    img: Image.Image,
    max_bytes: int,
    lo_q: int,
    hi_q: int,
    icc: bytes | None,
    steps: list[str],
    start_q: int,
    hinted: bool,
) -> tuple[bytes | None, int, float]:
    """Highest JPEG quality in [lo_q, hi_q] whose optimised encode fits ``max_bytes`` (see ``fit_to_byte_limit``).

    Returns ``(data or None, quality, smallest size seen or predicted)``.
    """
    sizes = _JpegSizes(img, icc, steps)
    q = _highest_fitting(sizes.predict, lo_q, hi_q, max_bytes, start_q, hinted=hinted)
    if q is None:
        if sizes.predict(lo_q) > SURELY_TOO_BIG * max_bytes:
            return None, lo_q, sizes.predict(lo_q)
        q = lo_q
    best, over = None, hi_q + 1  # the highest quality that fits for real; the lowest that did not
    while True:
        if len(sizes.encode(q)) <= max_bytes:
            best = q
            size = len(sizes.real[q])
            if (
                q + 1 >= over
                or size >= CLOSE_ENOUGH * max_bytes
                or sizes.predict(q + 1) > TRY_NEXT_MARGIN * max_bytes
            ):
                break
            q = _highest_fitting(sizes.predict, q + 1, over - 1, max_bytes, q + 1) or q + 1
        else:
            over = q
            floor = lo_q if best is None else best + 1
            if q <= floor:
                break
            below = _highest_fitting(sizes.predict, floor, q - 1, max_bytes, q - 1)
            if below is None and (best is not None or sizes.predict(floor) > SURELY_TOO_BIG * max_bytes):
                break
            q = floor if below is None else below
    if best is None:
        return None, lo_q, min(len(d) for d in sizes.real.values())
    return sizes.real[best], best, len(sizes.real[best])


# --- fitting -------------------------------------------------------------------------------------------


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
    quality_hint: int | None = None,
) -> FittedImage:
    """Re-encode an image so it is at most ``max_bytes``, losing as little as possible.

    Algorithm:

    1. If the input already fits and its format is in ``formats``, it is returned untouched (EXIF kept),
       once it has been checked to decode.
    2. Otherwise decode it (bomb-checked), turn it upright per EXIF, and at the current resolution:

       - JPEG (always Huffman-optimised): the highest quality in [``min_quality``, ``max_quality``] that
         fits. Sizes are *predicted* from a sample of the rows (one 16-row band in 8: ~1/8 of an encode),
         searched in a few secant steps from ``quality_hint`` (e.g. the quality the previous camera frame
         needed; default ``max_quality``), then confirmed by encoding the whole image, which also calibrates
         the predictions for the next step. Usually 3-5 sample encodes and 1-2 whole encodes.
       - Guarantee: the result fits; it is the highest quality that fits, except that the search stops at a
         fit within 3% of the limit, and does not encode ``quality + 1`` when it is predicted more than 3%
         over (so at most one quality step is left, and only when the next step is a close call).
       - PNG (lossless, ``optimize=True``): tried unless a fast estimate from a few strips says it is more
         than twice the limit (photos), because the real encode of a 1280×720 photo costs ~200 ms.
       - Choice: a PNG that fits wins when it is no bigger than the JPEG, or when the JPEG had to go below
         ``max_quality`` (lossless beats lossy); otherwise the JPEG.

    3. Only if nothing fits at ``min_quality``, downscale by ``min(scale_step, sqrt(max_bytes / smallest))``
       (bytes scale roughly with pixels) and repeat from 2; a JPEG shrunk to half size or less is decoded
       again at reduced scale (libjpeg's DCT scaling), which is much cheaper to resize. Below ``min_side``
       px, raise ``InputError``. A JPEG whose header (size and quality) says it must shrink to half size or
       less even with room to spare (``_draft_size``) is decoded once, at reduced scale, and step 2 starts
       there: the full-size decode is skipped.

    The output carries no EXIF (orientation is baked into the pixels); an RGB ICC profile is kept so colours
    stay right. Cost for a 1280×720 camera JPEG of ~290 KB into 204,800 bytes, with the previous frame's
    quality as hint: one decode (~5 ms), two or three sample encodes (~0.7 ms each), usually one whole
    optimised encode (~7 ms), a PNG estimate (~0.5 ms).
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

    info, decoded = probe_and_open(data, max_pixels=max_pixels)
    steps: list[str] = []
    may_shrink = "JPEG" in formats and len(data) > max_bytes
    draft = _draft_size(decoded, info, max_bytes, min_quality) if may_shrink else None
    if draft is None:
        load_pixels(decoded, info.format)  # decodes: a truncated file must not slip through, even untouched
        if len(data) <= max_bytes and info.format in formats:
            return FittedImage.unchanged(data, info)
        img = decoded
    else:  # far too big at full size: decoded once, at reduced scale (the whole stream is still read)
        img = _decode_reduced(data, info, draft, max_pixels, steps, "JPEG decoded at reduced scale")
    icc = img.info.get("icc_profile") if img.mode in ("RGB", "RGBA") else None
    img = _for_resizing(apply_exif_orientation(img))  # also makes CMYK/16-bit/palette encodable
    width0, height0 = (info.width, info.height) if draft else img.size
    start_q = max_quality if quality_hint is None else min(max(quality_hint, min_quality), max_quality)

    def fitted(out: bytes, fmt: str, quality: int | None) -> FittedImage:
        return FittedImage(
            out, fmt, quality, width0, height0, img.width, img.height, len(data), len(out), tuple(steps)
        )

    while True:
        jpeg, quality, smallest = None, max_quality, math.inf
        if "JPEG" in formats:
            jpeg, quality, smallest = _best_jpeg(
                img, max_bytes, min_quality, max_quality, icc, steps, start_q, start_q != max_quality
            )
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
        start_q = max_quality
        img = _shrunk(data, info, img, new_size, max_pixels, steps)


def _shrunk(
    data: bytes,
    info: ImageInfo,
    img: Image.Image,
    new_size: tuple[int, int],
    max_pixels: int,
    steps: list[str],
) -> Image.Image:
    """``img`` resized to ``new_size`` (Lanczos). A JPEG going to half size or less is decoded again with
    libjpeg's DCT scaling (``draft``) to at least ``new_size``: far cheaper than filtering every pixel."""
    if info.format == "JPEG" and 2 * new_size[0] <= img.width and 2 * new_size[1] <= img.height:
        decoded = _decode_reduced(
            data, info, new_size, max_pixels, steps, "JPEG decoded again at reduced scale"
        )
        img = _for_resizing(apply_exif_orientation(decoded))
    return img.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _decode_reduced(
    data: bytes, info: ImageInfo, size: tuple[int, int], max_pixels: int, steps: list[str], what: str
) -> Image.Image:
    """The JPEG decoded by libjpeg at 1/2 to 1/8 scale, at least ``size`` (displayed axes) once upright."""
    stored = size[::-1] if info.orientation in SWAPS_AXES else size  # the decoder works on stored axes
    decoded = open_image_safely(data, max_pixels=max_pixels, draft_size=stored)
    shown = decoded.size[::-1] if info.orientation in SWAPS_AXES else decoded.size
    steps.append(f"{what}: {shown[0]}x{shown[1]}")
    return decoded


def _draft_size(
    img: Image.Image, info: ImageInfo, max_bytes: int, min_quality: int
) -> tuple[int, int] | None:
    """For a JPEG that cannot fit ``max_bytes`` unless shrunk to half size or less, the (displayed) size to
    decode it at, with room to spare; None to decode it whole.

    Guessed from the header alone: the input's size and quality (its luminance table), with log(size)
    ~linear on ``_size_axis`` (``_DEFAULT_SLOPE``), gives its size at ``min_quality``; bytes scale with
    pixels. The room (``_GUESS_MARGIN`` times the limit) covers the guess being ~2x too big (the worst seen
    on photos), so the image is decoded no smaller than the search (which goes on from there) would keep it.
    """
    table = (getattr(img, "quantization", None) or {}).get(0)
    if info.format != "JPEG" or not table or len(table) != 64:
        return None
    scale = 100 * sum(table) / _STD_LUMA_SUM  # libjpeg's quality scale of the input, in %
    at_min = info.bytes * math.exp(_DEFAULT_SLOPE * (_size_axis(min_quality) + math.log(scale + 20)))
    factor = math.sqrt(_GUESS_MARGIN * max_bytes / at_min)
    if factor > 0.5:  # DCT scaling halves at least: the whole image is needed anyway
        return None
    return (math.ceil(info.width * factor), math.ceil(info.height * factor))


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
    stored = (info.height, info.width) if info.orientation in SWAPS_AXES else (info.width, info.height)
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
