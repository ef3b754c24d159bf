"""Safe decoding: any stored file to an upright RGB Pillow image, or a clear ImageError.

Uploaded data is untrusted: files can be empty, truncated, mislabelled, decompression
bombs, or in modes a model cannot take (CMYK, 16-bit, palette with transparency, greyscale,
animations). Everything past this module sees only 8-bit RGB with the camera's EXIF
orientation applied, so the transforms and the model never need to care.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

# 40 megapixels: a 40 MP RGB image is 120 MB decoded, safe in a 1 GB function, and far
# beyond any photo a classifier needs. Checked against the header BEFORE decoding.
DEFAULT_MAX_PIXELS = 40_000_000
# What counts as an image file by name, where a listing has to decide before reading anything.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# Formats we accept; naming them stops Pillow from trying every plugin (some, like EPS or
# PSD, have large attack surfaces and no place in a photo pipeline).
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG includes MPO (camera JPEGs with previews)

WHITE = (255, 255, 255)


class ImageError(ValueError):
    """A file that is not a usable image; the message says why, for the user."""


def _to_8bit(image: Image.Image) -> Image.Image:
    """High-bit-depth greyscale to 8-bit L by scaling, not clipping (Pillow's convert clips)."""
    arr = np.asarray(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit PNG/TIFF greyscale ("I" is what some 16-bit files decode to).
        arr = np.clip(arr.astype(np.int64), 0, 65535)
        arr = (arr * 255 + 32767) // 65535
    else:  # "F": floating point, assume 0..1 if it looks like it, else 0..255
        arr = np.nan_to_num(arr.astype(np.float64))
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255)
    return Image.fromarray(arr.astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited onto white.

    White, not black, because transparent regions in product shots and icons are meant to
    be background, and a black fill would teach a classifier a false cue.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _to_8bit(image).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    # CMYK (Pillow reads Adobe's inverted CMYK JPEGs correctly), L, 1, P, YCbCr, LAB, HSV.
    return image.convert("RGB")


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_size: int | None = None) -> Image.Image:
    """Decode `data` to an upright 8-bit RGB image; raise ImageError naming the problem.

    `min_size`: the caller needs at least this many pixels on the shorter side, so JPEGs
    may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), which is several times
    faster than decoding in full and resizing. The result may still be larger than needed.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns (rather than fails) between its limit and twice its limit: a bomb is an error.
        # Its other warnings ("Corrupt EXIF data", "Truncated File Read") are about files it still decodes,
        # or fails on with an error reported below: nothing a caller could act on, so they stay quiet.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except UnidentifiedImageError:
            raise ImageError(f"not a recognised image (accepted formats: {', '.join(FORMATS)})") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageError(f"decompression bomb refused: {err}") from None
        except Exception as err:  # malformed headers raise all sorts (SyntaxError, struct.error, ...)
            raise ImageError(f"unreadable image header: {type(err).__name__}: {err}") from None

        width, height = image.size
        if width < 1 or height < 1:
            raise ImageError(f"image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageError(f"image too large: {width}x{height} = {width * height:,} pixels exceeds "
                             f"the limit of {max_pixels:,} (possible decompression bomb)")
        if min_size and isinstance(image, JpegImageFile):
            # draft wants both sides >= the request; ask for the shorter side on both axes.
            scale_to = min(min_size, width, height)
            image.draft(None, (scale_to, scale_to))
        try:
            image.load()  # the first frame only: animated GIF/WebP/PNG frames after it are ignored
            ImageOps.exif_transpose(image, in_place=True)  # not a copy of every upright photo
            image = to_rgb(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageError(f"decompression bomb refused: {err}") from None
        except MemoryError:
            raise ImageError(f"out of memory decoding a {width}x{height} image") from None
        except Exception as err:
            reason = str(err) or type(err).__name__
            if "truncated" in reason or isinstance(err, (EOFError, OSError)):
                raise ImageError(f"corrupt or truncated {image.format} data: {reason}") from None
            raise ImageError(f"cannot decode {image.format} image: {type(err).__name__}: {reason}") from None
    return image
