"""Safe decoding of untrusted files: what is refused, and how odd valid files come out."""

from __future__ import annotations

import imagefiles as f
import numpy as np
import pytest
from PIL import Image

from dlpipe.shared.images import ImageError, open_image


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(image)[y, x])


def close(a, b, tol: int = 12) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=False))


# --- refused, with a reason ------------------------------------------------------------

def test_empty_file_is_refused():
    with pytest.raises(ImageError, match="empty file"):
        open_image(b"")


def test_truncated_jpeg_is_refused():
    with pytest.raises(ImageError, match="truncated"):
        open_image(f.truncated_jpeg())


def test_text_file_named_jpg_is_refused():
    with pytest.raises(ImageError, match="not a recognised image"):
        open_image(f.text_as_jpg())


def test_bomb_beyond_pillows_hard_limit_is_refused():
    # 400 megapixels: Pillow raises DecompressionBombError while reading the header.
    data = f.png_bomb(20_000, 20_000)
    assert len(data) < 200_000
    with pytest.raises(ImageError, match="decompression bomb"):
        open_image(data)


def test_bomb_in_pillows_warning_band_is_refused_not_warned():
    # 100 megapixels: between Pillow's limit and twice it, where Pillow only warns.
    limit = Image.MAX_IMAGE_PIXELS
    side = int((1.2 * limit) ** 0.5)
    with pytest.raises(ImageError, match="decompression bomb"):
        open_image(f.png_bomb(side, side), max_pixels=10 * limit)


def test_pixel_limit_is_checked_before_decoding():
    # The header claims 9000x9000 but the pixel data is garbage: a decoder would fail with
    # "truncated"; refusing on the header's dimensions is what must happen first.
    bomb = f.png_bomb(9000, 9000)
    garbled = bomb[:60] + b"\x00" * 40
    with pytest.raises(ImageError, match="too large: 9000x9000"):
        open_image(garbled)
    with pytest.raises(ImageError, match="too large"):
        open_image(f.jpeg(64, 48), max_pixels=64 * 48 - 1)
    assert open_image(f.jpeg(64, 48), max_pixels=64 * 48).size == (64, 48)


# --- converted correctly ---------------------------------------------------------------

def test_cmyk_jpeg_becomes_rgb():
    image = open_image(f.cmyk_jpeg())
    assert image.mode == "RGB"
    assert close(pixel(image, 10, 10), f.RED)


def test_16bit_png_is_scaled_not_clipped():
    image = open_image(f.png16_gradient(width=64))
    assert image.mode == "RGB"
    row = np.asarray(image)[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert abs(row[32] - round(32 / 63 * 255)) <= 1      # mid-ramp is mid-grey, not white
    assert np.all(np.diff(row) >= 0)


def test_palette_png_transparency_is_composited_on_white():
    image = open_image(f.palette_png_transparent())
    assert image.mode == "RGB"
    assert pixel(image, 5, 5) == f.WHITE
    assert pixel(image, 30, 5) == f.BLUE


def test_rgba_png_is_composited_on_white():
    image = open_image(f.rgba_png_half_transparent())
    assert pixel(image, 5, 5) == f.RED
    assert pixel(image, 30, 5) == f.WHITE


def test_greyscale_becomes_rgb_with_equal_channels():
    image = open_image(f.greyscale_jpeg())
    assert image.mode == "RGB"
    r, g, b = pixel(image, 16, 16)
    assert r == g == b and abs(r - 100) <= 2


def test_animated_gif_uses_first_frame():
    image = open_image(f.animated_gif())
    assert image.mode == "RGB"
    assert close(pixel(image, 12, 12), f.RED)


def test_exif_orientation_is_applied():
    image = open_image(f.exif_rotated_jpeg())
    assert image.size == (40, 60)
    assert close(pixel(image, 20, 5), f.RED, tol=20)     # the stored left half is now on top
    assert close(pixel(image, 20, 55), f.BLUE, tol=20)
    assert image.getexif().get(0x0112, 1) == 1          # not rotated a second time downstream


def test_jpeg_draft_decodes_smaller_but_never_below_the_request():
    data = f.jpeg(400, 300)
    assert open_image(data).size == (400, 300)
    assert open_image(data, min_size=100).size == (200, 150)   # 1/2 scale: 1/4 would be < 100
    assert open_image(data, min_size=70).size == (100, 75)     # 1/4 scale
    assert open_image(data, min_size=1000).size == (400, 300)  # never upsampled
