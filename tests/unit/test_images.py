"""tasks.images: formats by content, hostile files (truncated, bombs), EXIF orientation, fitting into a byte limit."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageChops, ImageDraw

from clients.errors import InputError
from tasks.images import (
    FittedImage,
    ImageInfo,
    Rejected,
    apply_exif_orientation,
    downscale_to_max_side,
    fit_images_to_byte_limit,
    fit_to_byte_limit,
    open_image_safely,
    probe_image,
    sniff_image_format,
    validate_image,
    validate_images,
)
from tests.images import jpeg_bytes, png_bytes

MINIVIZ_LIMIT = 204_800


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def noisy_photo(width: int = 1280, height: int = 720, sigma: float = 20, seed: int = 0) -> Image.Image:
    """A gradient with Gaussian noise: as hard to compress as a detailed camera frame."""
    rng = np.random.default_rng(seed)
    base = np.asarray(Image.linear_gradient("L").resize((width, height)).convert("RGB"), dtype=np.float32)
    return Image.fromarray(np.clip(base + rng.normal(0, sigma, base.shape), 0, 255).astype(np.uint8))


def graphic(width: int = 1280, height: int = 720) -> Image.Image:
    """A dashboard-like graphic: flat colours and text, where PNG beats JPEG."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle((100, 100, 600, 400), fill=(200, 30, 30))
    for y in range(0, height, 40):
        draw.text((650, y), "temperature 25.3 C  humidity 55 %", fill=(0, 0, 0))
    return img


def half_and_half(width: int = 60, height: int = 40) -> Image.Image:
    """Left half red, right half blue."""
    img = Image.new("RGB", (width, height), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, width // 2, height))
    return img


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width×height black pixels, compressed row by row: tiny on disk, huge decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def has_exif(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as img:
        return bool(img.getexif()) or "exif" in img.info


@pytest.fixture(scope="module")
def camera_jpeg() -> bytes:
    data = encode(noisy_photo(), "JPEG", quality=90)
    assert 380_000 < len(data) < 480_000  # a ~400 KB 1280×720 camera snapshot
    return data


# --- formats by content --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_format_comes_from_content_not_file_name(tmp_path, fmt):
    path = tmp_path / "snapshot.jpg"  # deliberately wrong extension
    path.write_bytes(encode(Image.new("RGB", (32, 24), (10, 200, 30)), fmt))
    data = path.read_bytes()

    assert sniff_image_format(data) == fmt
    info = probe_image(data)
    assert (info.format, info.width, info.height, info.bytes) == (fmt, 32, 24, len(data))


@pytest.mark.parametrize(
    ("data", "problem"),
    [(b"", "empty (0 bytes)"), (b"hello, not an image", "not a recognised image format")],
)
def test_unknown_content_is_rejected(data, problem):
    with pytest.raises(InputError) as err:
        sniff_image_format(data)
    assert err.value.field == "image"
    assert err.value.problem.startswith(problem)


def test_garbage_after_a_valid_signature_is_a_clear_error():
    with pytest.raises(InputError) as err:
        open_image_safely(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert err.value.field == "image"
    assert err.value.problem.startswith("unreadable PNG")


# --- hostile files -------------------------------------------------------------------------------------


def test_truncated_jpeg_is_an_input_error_not_a_crash():
    data = jpeg_bytes(640, 480)
    truncated = data[: len(data) // 2]

    # the header is intact, so probing (no decode) still works...
    assert probe_image(truncated).width == 640
    # ...and decoding reports the damage
    with pytest.raises(InputError) as err:
        open_image_safely(truncated)
    assert err.value.field == "image"
    assert "truncated or corrupt JPEG" in err.value.problem
    with pytest.raises(InputError, match="truncated or corrupt JPEG"):
        validate_image(truncated)
    with pytest.raises(InputError, match="truncated or corrupt JPEG"):
        fit_to_byte_limit(truncated, 1_000)


def test_decompression_bomb_is_refused_from_the_header():
    bomb = bomb_png(20_000, 20_000)  # 400 Mpx, 50 MB decoded as 1-bit, hundreds of times more as RGB
    assert len(bomb) < 100_000

    for call in (open_image_safely, probe_image, validate_image, lambda d: fit_to_byte_limit(d, 1_000)):
        with pytest.raises(InputError) as err:
            call(bomb)
        assert err.value.field == "image"
        assert "decompression bomb" in err.value.problem


def test_pillow_bomb_warning_counts_as_rejection_even_under_a_higher_cap():
    # 100 Mpx: above Pillow's MAX_IMAGE_PIXELS (89.5 M, a warning) but below its hard error (179 M)
    bomb = bomb_png(10_000, 10_000)
    with pytest.raises(InputError) as err:
        open_image_safely(bomb, max_pixels=500_000_000)
    assert "decompression bomb" in err.value.problem
    assert err.value.limit == f"at most {Image.MAX_IMAGE_PIXELS:,} pixels"


def test_own_pixel_cap_is_checked_before_decoding():
    big = bomb_png(3_000, 3_000)
    with pytest.raises(InputError) as err:
        open_image_safely(big, max_pixels=1_000_000)
    assert str(err.value) == "image: 3000×3000 px = 9,000,000 pixels (at most 1,000,000 pixels)"
    assert open_image_safely(big, max_pixels=10_000_000).size == (3_000, 3_000)


def test_one_pixel_image():
    data = png_bytes(1, 1)
    assert probe_image(data) == ImageInfo("PNG", 1, 1, len(data), "RGB", 1)
    assert fit_to_byte_limit(data, 10_000).untouched

    as_jpeg = fit_to_byte_limit(data, 10_000, formats=("JPEG",))
    assert (as_jpeg.format, as_jpeg.width, as_jpeg.height, as_jpeg.quality) == ("JPEG", 1, 1, 95)

    with pytest.raises(InputError) as err:  # headers alone exceed 100 bytes and 1 px cannot shrink
        fit_to_byte_limit(data, 100, formats=("JPEG",))
    assert err.value.problem == "1×1 px does not fit in 100 bytes even at 1×1 px"


# --- EXIF orientation ----------------------------------------------------------------------------------


@pytest.fixture
def rotated_jpeg() -> bytes:
    """Stored 60×40 with the red half on the left; EXIF orientation 6 says: rotate 90° clockwise to view."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(half_and_half(), "JPEG", quality=95, exif=exif.tobytes())


def assert_upright(img: Image.Image) -> None:
    """Viewed upright, the image is 40×60 with red on top and blue at the bottom."""
    assert img.size == (40, 60)
    red, _, blue = img.convert("RGB").getpixel((20, 10))
    assert red > 200 and blue < 60
    red, _, blue = img.convert("RGB").getpixel((20, 50))
    assert blue > 200 and red < 60


def test_exif_orientation_is_applied(rotated_jpeg):
    info = probe_image(rotated_jpeg)
    assert (info.width, info.height, info.orientation) == (40, 60, 6)
    assert_upright(apply_exif_orientation(open_image_safely(rotated_jpeg)))


@pytest.mark.parametrize("formats", [("PNG",), ("JPEG",)])
def test_fitted_image_is_upright_and_has_no_exif(rotated_jpeg, formats):
    # one byte under the input forces a re-encode (the input is JPEG, so formats=("PNG",) does too)
    fitted = fit_to_byte_limit(rotated_jpeg, len(rotated_jpeg) - 1, formats=formats)
    assert fitted.format == formats[0]
    assert (fitted.width_before, fitted.height_before, fitted.width, fitted.height) == (40, 60, 40, 60)
    assert not has_exif(fitted.data)
    with Image.open(io.BytesIO(fitted.data)) as img:
        assert_upright(img)


# --- fit_to_byte_limit ---------------------------------------------------------------------------------


def optimised_jpeg_size(data: bytes, quality: int) -> int:
    """The size of the whole image encoded as ``fit_to_byte_limit`` encodes it (Huffman-optimised)."""
    with Image.open(io.BytesIO(data)) as img:
        return len(encode(img, "JPEG", quality=quality, optimize=True))


def whole_encodes(fitted: FittedImage) -> list[str]:
    return [s for s in fitted.steps if s.startswith("JPEG") and " sample " not in s]


def test_camera_snapshot_fits_miniviz_limit_at_full_resolution(camera_jpeg):
    fitted = fit_to_byte_limit(camera_jpeg, MINIVIZ_LIMIT)

    assert fitted.format == "JPEG"
    assert fitted.bytes_after == len(fitted.data) <= MINIVIZ_LIMIT
    assert (fitted.width, fitted.height) == (fitted.width_before, fitted.height_before) == (1280, 720)
    assert not fitted.resized and not fitted.untouched
    assert fitted.bytes_before == len(camera_jpeg)
    assert 40 <= fitted.quality < 95
    with Image.open(io.BytesIO(fitted.data)) as img:
        assert (img.format, img.size) == ("JPEG", (1280, 720))
    assert fitted.steps[-1] == "PNG skipped 1280x720: estimated over 2x the limit"
    assert not any("reduced scale" in s for s in fitted.steps)  # it fits at full size: decoded whole


@pytest.mark.parametrize("limit", [120_000, MINIVIZ_LIMIT, 300_000])
def test_fit_is_the_highest_quality_that_fits(camera_jpeg, limit):
    """The guarantee: it fits; one quality step more does not (or the fit is within 3% of the limit); two
    steps more never fit (the search may leave one step only on a close call of its size prediction)."""
    fitted = fit_to_byte_limit(camera_jpeg, limit)

    assert fitted.format == "JPEG" and not fitted.resized
    assert len(fitted.data) <= limit
    assert optimised_jpeg_size(camera_jpeg, fitted.quality) == len(fitted.data)  # what it claims to be
    one_more = optimised_jpeg_size(camera_jpeg, fitted.quality + 1)
    assert one_more > limit or len(fitted.data) >= 0.97 * limit
    assert optimised_jpeg_size(camera_jpeg, fitted.quality + 2) > limit


@pytest.mark.parametrize("hint", [None, 40, 60, 95, 200])
def test_quality_hint_only_moves_where_the_search_starts(camera_jpeg, hint):
    reference = fit_to_byte_limit(camera_jpeg, MINIVIZ_LIMIT)
    hinted = fit_to_byte_limit(camera_jpeg, MINIVIZ_LIMIT, quality_hint=hint)
    assert (hinted.quality, hinted.data) == (reference.quality, reference.data)


def test_a_camera_frame_costs_few_encodes(camera_jpeg):
    """Sizes are predicted from a sample of the rows; the whole image is encoded once or twice."""
    cold = fit_to_byte_limit(camera_jpeg, MINIVIZ_LIMIT)
    assert len(whole_encodes(cold)) <= 2
    assert 1 <= sum(" sample " in s for s in cold.steps) <= 8
    # the quality the previous frame needed is the usual hint: two samples, one or two whole encodes
    warm = fit_to_byte_limit(camera_jpeg, MINIVIZ_LIMIT, quality_hint=cold.quality)
    assert len(whole_encodes(warm)) <= 2
    assert sum(" sample " in s for s in warm.steps) <= 2


def test_downscales_only_when_min_quality_is_not_enough(camera_jpeg):
    fitted = fit_to_byte_limit(camera_jpeg, 30_000, min_quality=40)

    assert optimised_jpeg_size(camera_jpeg, 40) > 30_000  # full size could not fit at min quality
    assert fitted.format == "JPEG"
    assert len(fitted.data) <= 30_000
    assert fitted.resized and fitted.width < 1280
    assert abs(fitted.width / fitted.height - 1280 / 720) < 0.01  # aspect ratio kept
    assert fitted.quality >= 40
    with Image.open(io.BytesIO(fitted.data)) as img:
        assert img.size == (fitted.width, fitted.height)


def test_resolution_is_kept_while_quality_can_give(camera_jpeg):
    # just above what min quality needs at full size: quality drops to (about) the minimum, size stays
    limit = int(optimised_jpeg_size(camera_jpeg, 40) * 1.02)
    fitted = fit_to_byte_limit(camera_jpeg, limit, min_quality=40)
    assert not fitted.resized and fitted.quality in (40, 41)
    assert len(fitted.data) <= limit


def test_a_large_rotated_jpeg_is_shrunk_upright():
    # stored 1800x1200 with EXIF orientation 6 (displayed 1200x1800); far too big for 10 KB at full size,
    # so it is decoded at reduced scale (on its stored axes) and turned upright before resizing
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(noisy_photo(1800, 1200, sigma=10, seed=5), "JPEG", quality=90, exif=exif.tobytes())

    fitted = fit_to_byte_limit(data, 10_000)

    assert (fitted.width_before, fitted.height_before) == (1200, 1800)
    reduced = [s for s in fitted.steps if s.startswith(("JPEG decoded at reduced scale: ",
                                                         "JPEG decoded again at reduced scale: "))]  # fmt: skip
    assert reduced
    width, height = map(int, reduced[0].rsplit(" ", 1)[1].split("x"))
    assert height > width >= fitted.width  # upright, and never smaller than the target
    assert fitted.resized and fitted.width < fitted.height
    assert abs(fitted.height / fitted.width - 1.5) < 0.01
    assert len(fitted.data) <= 10_000
    with Image.open(io.BytesIO(fitted.data)) as img:
        assert img.size == (fitted.width, fitted.height)
        assert not has_exif(fitted.data)


def test_a_jpeg_far_too_big_is_decoded_once_at_reduced_scale():
    # its header (size, quality) says even min quality needs half size or less: no full-size decode, no
    # full-size encode, and what comes out still fits
    data = encode(noisy_photo(2400, 1600, sigma=10, seed=3), "JPEG", quality=90)

    fitted = fit_to_byte_limit(data, 10_000)

    assert fitted.steps[0].startswith("JPEG decoded at reduced scale: ")
    assert not any("2400x1600" in s for s in fitted.steps)
    assert fitted.resized and len(fitted.data) <= 10_000
    assert (fitted.width_before, fitted.height_before) == (2400, 1600)
    assert abs(fitted.width / fitted.height - 1.5) < 0.01


def test_png_wins_when_it_is_smaller_than_jpeg():
    source = graphic()
    data = encode(source, "BMP")  # 2.7 MB and not an allowed format: must be re-encoded
    jpeg_at_max = len(encode(source, "JPEG", quality=95, optimize=True))

    fitted = fit_to_byte_limit(data, MINIVIZ_LIMIT)

    assert fitted.format == "PNG" and fitted.quality is None
    assert fitted.bytes_after < jpeg_at_max
    assert (fitted.width, fitted.height) == (1280, 720)
    with Image.open(io.BytesIO(fitted.data)) as img:
        assert ImageChops.difference(img.convert("RGB"), source).getbbox() is None  # lossless


def test_input_that_already_fits_is_returned_untouched():
    data = jpeg_bytes(320, 240)
    fitted = fit_to_byte_limit(data, MINIVIZ_LIMIT)
    assert fitted.untouched and fitted.data is data
    assert (fitted.format, fitted.quality, fitted.bytes_after, fitted.steps) == ("JPEG", None, len(data), ())


def test_fitting_input_in_a_format_not_allowed_is_converted():
    data = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "GIF")
    fitted = fit_to_byte_limit(data, MINIVIZ_LIMIT)
    assert not fitted.untouched and fitted.format in ("JPEG", "PNG")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"formats": ("GIF",)}, "formats"),
        ({"min_quality": 96}, "min_quality"),
        ({"scale_step": 1.0}, "scale_step"),
    ],
)
def test_fit_rejects_bad_arguments(kwargs, field):
    with pytest.raises(InputError) as err:
        fit_to_byte_limit(jpeg_bytes(), 1_000, **kwargs)
    assert err.value.field == field


# --- validate / downscale ------------------------------------------------------------------------------


def test_validate_image_names_problem_and_limit():
    small = png_bytes(200, 180)
    with pytest.raises(InputError) as err:
        validate_image(small, min_width=256, min_height=256)
    assert str(err.value) == "image: 200×180 px (at least 256×256)"

    with pytest.raises(InputError) as err:
        validate_image(small, min_width=256)
    assert str(err.value) == "image: 200×180 px (at least 256 px wide)"

    with pytest.raises(InputError) as err:
        validate_image(small, max_bytes=100)
    assert str(err.value) == f"image: {len(small):,} bytes (at most 100 bytes)"

    gif = encode(Image.new("RGB", (300, 300)), "GIF")
    with pytest.raises(InputError) as err:
        validate_image(gif, allowed_formats=("JPEG", "PNG"))
    assert str(err.value) == "image: format GIF (one of JPEG, PNG)"

    info = validate_image(small, min_width=100, min_height=100, max_bytes=10_000, allowed_formats=["PNG"])
    assert info == ImageInfo("PNG", 200, 180, len(small), "RGB", 1)


def test_validate_uses_displayed_size(rotated_jpeg):
    # stored 60×40, displayed 40×60: a 50 px minimum height passes, a 50 px minimum width does not
    assert validate_image(rotated_jpeg, min_height=50).height == 60
    with pytest.raises(InputError, match=r"40×60 px \(at least 50 px wide\)"):
        validate_image(rotated_jpeg, min_width=50)


def test_downscale_to_max_side():
    big = encode(noisy_photo(2000, 1500, sigma=5), "JPEG", quality=85)
    out = downscale_to_max_side(big, 1000)
    assert (out.format, out.width, out.height, out.quality) == ("JPEG", 1000, 750, 90)
    assert (out.width_before, out.height_before) == (2000, 1500)
    with Image.open(io.BytesIO(out.data)) as img:
        assert img.size == (1000, 750)

    small = jpeg_bytes(320, 240)
    assert downscale_to_max_side(small, 1000).data is small


def test_downscale_turns_rotated_images_upright(rotated_jpeg):
    out = downscale_to_max_side(rotated_jpeg, 30, format="PNG")
    assert (out.format, out.width, out.height) == ("PNG", 20, 30)
    assert not has_exif(out.data)


# --- batch tasks ---------------------------------------------------------------------------------------


def test_batch_tasks_report_each_image_in_order():
    good = jpeg_bytes(320, 240)
    truncated = good[: len(good) // 2]
    results = fit_images_to_byte_limit.fn([good, b"not an image", truncated], MINIVIZ_LIMIT)

    assert isinstance(results[0], FittedImage) and results[0].untouched
    assert results[1] == Rejected(1, "image: not a recognised image format (starts with 6e6f7420616e2069)")
    assert isinstance(results[2], Rejected) and results[2].index == 2
    assert "truncated or corrupt JPEG" in results[2].reason

    checked = validate_images.fn([good, png_bytes(10, 10)], min_width=64, min_height=64)
    assert checked[0] == ImageInfo("JPEG", 320, 240, len(good), "RGB", 1)
    assert checked[1] == Rejected(1, "image: 10×10 px (at least 64×64)")
