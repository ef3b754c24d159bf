"""Fuzzing the image decoder: valid small files, mutated by flipping, overwriting and cutting
bytes, must decode to RGB or raise ImageError, never anything else (uploads are untrusted).

Bounded and reproducible: a fixed number of examples, derandomized, no example database.
"""

from __future__ import annotations

import imagefiles as f
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dlpipe.shared.images import ImageError, open_image

MAX_PIXELS = 1 << 16  # a mutated header claiming more is refused unread: keeps every example fast

SEEDS = {
    "jpeg": f.jpeg(24, 16),
    "jpeg-exif": f.exif_rotated_jpeg(),
    "jpeg-cmyk": f.cmyk_jpeg(),
    "jpeg-progressive": f.encode(f.photo(24, 16), "JPEG", progressive=True),
    "png": f.encode(f.photo(16, 12), "PNG"),
    "png-16bit": f.png16_gradient(16, 4),
    "png-palette": f.palette_png_transparent(),
    "png-interlaced": f.encode(f.photo(16, 12), "PNG", interlace=1),
    "gif-animated": f.animated_gif(),
    "webp": f.encode(f.photo(16, 12), "WEBP"),
    "bmp": f.encode(f.photo(8, 6), "BMP"),
    "tiff": f.encode(f.photo(8, 6), "TIFF", compression="tiff_lzw"),
}

FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data[at] ^= draw(st.integers(1, 255))  # flip bits
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))  # overwrite a few bytes (a length, a marker)
            data[at:at + len(chunk)] = chunk
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]  # truncate
    return bytes(data)


def _decodes_or_refuses(data: bytes, min_size: int | None) -> None:
    try:
        image = open_image(data, max_pixels=MAX_PIXELS, min_size=min_size)
    except ImageError as err:
        assert str(err)  # the message is for the user  # noqa: PT017 (a property: valid, or the documented error)
        return
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert 1 <= image.width * image.height <= MAX_PIXELS


def test_every_seed_decodes():
    for name, data in SEEDS.items():
        assert open_image(data, max_pixels=MAX_PIXELS).mode == "RGB", name


@FUZZ
@given(data=mutated(), min_size=st.sampled_from([None, 4]))
def test_mutated_images_decode_or_raise_image_error(data, min_size):
    _decodes_or_refuses(data, min_size)


@settings(FUZZ, max_examples=100)
@given(data=st.binary(max_size=64), header=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a",
                                                             b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM", b"II*\x00"]))
def test_random_bytes_behind_a_magic_number_raise_image_error(data, header):
    _decodes_or_refuses(header + data, None)
