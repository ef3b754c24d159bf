"""Real image files, good and bad, generated in memory for the augment tests.

Each function returns the bytes a user could upload; nothing is mocked. The bombs are
built the way real ones are: a valid PNG header claiming huge dimensions over a tiny
zlib stream of zeros.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def photo(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A smooth colourful RGB image (gradients plus a little noise), like a small photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(1, width - 1)
    g = 255 * y / max(1, height - 1)
    b = 128 + 100 * np.sin((x + y + seed * 7) / 6)
    arr = np.stack([r, g, b], axis=-1) + rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def jpeg(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    return encode(photo(width, height, seed), "JPEG", quality=92)


def truncated_jpeg() -> bytes:
    data = jpeg(96, 96)
    return data[: len(data) // 2]


def text_as_jpg() -> bytes:
    return b"This is a text file that someone named photo.jpg.\n"


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height, all black: tiny on disk, huge decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def cmyk_jpeg(color=(0, 255, 255, 0)) -> bytes:
    """Pure red in CMYK (no cyan, full magenta and yellow)."""
    return encode(Image.new("CMYK", (32, 24), color), "JPEG", quality=95)


def png16_gradient(width: int = 64, height: int = 8) -> bytes:
    """16-bit greyscale PNG: a ramp from 0 to 65535 across."""
    ramp = np.linspace(0, 65535, width).round().astype(np.uint16)
    return encode(Image.fromarray(np.tile(ramp, (height, 1))), "PNG")


def palette_png_transparent() -> bytes:
    """Palette PNG: left half fully transparent (index 0), right half opaque blue (index 1)."""
    image = Image.new("P", (40, 20), 0)
    image.putpalette([0, 0, 0, *BLUE] + [0, 0, 0] * 254)
    image.paste(1, (20, 0, 40, 20))
    return encode(image, "PNG", transparency=0)


def rgba_png_half_transparent() -> bytes:
    """Left half opaque red, right half fully transparent green."""
    image = Image.new("RGBA", (40, 20), (*GREEN, 0))
    image.paste((*RED, 255), (0, 0, 20, 20))
    return encode(image, "PNG")


def greyscale_jpeg() -> bytes:
    return encode(Image.new("L", (32, 32), 100), "JPEG", quality=95)


def animated_gif() -> bytes:
    """Three frames: red, green, blue. Only the first should be used."""
    frames = [Image.new("RGB", (24, 24), c) for c in (RED, GREEN, BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated_jpeg() -> bytes:
    """Stored 60x40 with the left half red, right half blue, EXIF orientation 6.

    Orientation 6 means "rotate 90 degrees clockwise to display", so the upright image
    is 40x60 with red on top and blue below.
    """
    image = Image.new("RGB", (60, 40), BLUE)
    image.paste(RED, (0, 0, 30, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


BAD_FILES = {
    "empty.jpg": lambda: b"",
    "truncated.jpg": truncated_jpeg,
    "text.jpg": text_as_jpg,
    "bomb.png": lambda: png_bomb(20_000, 20_000),
}
GOOD_ODD_FILES = {
    "cmyk.jpg": cmyk_jpeg,
    "deep.png": png16_gradient,
    "palette.png": palette_png_transparent,
    "alpha.png": rgba_png_half_transparent,
    "grey.jpg": greyscale_jpeg,
    "animated.gif": animated_gif,
    "rotated.jpg": exif_rotated_jpeg,
}
