"""The variants of one source image: pure Pillow and numpy, no store and no clock.

Every output of a source has the same dimensions: ``size`` x ``size`` if the spec gives a
size (the centre square of the upright image, scaled), otherwise the source's own. Each
random variant draws its parameters from its own seed (`dlpipe.augment.naming`), so the
same source, spec and seed always give the same bytes.
"""

from __future__ import annotations

import io
import math
import operator
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image, ImageFilter

from dlpipe.augment.naming import output_names, variant_seed
from dlpipe.shared.images import open_image
from dlpipe.wire import AugmentSpec

JPEG_QUALITY = 90          # fixed: outputs must be reproducible and comparable across runs
PNG_COMPRESS_LEVEL = 3     # zlib level: most of level 6's size at a fraction of its time
RESAMPLE = Image.Resampling.BILINEAR  # enlarging only: shrinking is supersampled (see `sample`)
MAX_GRID = 3               # supersampling: at most 3 x 3 point samples per output pixel (see `sample`)
SAMPLE_DENSITY = 4 / 3     # rotate, crop: point samples per source pixel, at least (as far as 3 x 3 allows)
BASE_DENSITY = 2.0         # the base shared by five variants: as good as Pillow's bilinear resize, at 2/3 its cost

# Parameter ranges of the random variants (uniform).
ROTATE_DEGREES = 20.0              # angle in [-20, 20], zoomed in so no empty corners show
CROP_SIDE = (0.65, 0.9)            # crop side as a fraction of the frame's side...
CROP_ASPECT = (3 / 4, 4 / 3)       # ...with this aspect ratio jitter, then scaled to the output size
CROP_MIN_SIDE = CROP_SIDE[0] * math.sqrt(CROP_ASPECT[0])  # the narrowest a crop can be, as a fraction
BLUR_RADIUS = (0.6, 2.0)           # box blur radius in pixels per 256 pixels of output side
COLOR_FACTOR = (0.5, 1.5)          # saturation: 0 is greyscale, 1 unchanged
CONTRAST_FACTOR = (0.6, 1.4)
BRIGHTNESS_FACTOR = (0.7, 1.3)



@dataclass
class Frame:
    """A decoded source: the image, the region outputs are cut from, and the output size."""

    image: Image.Image
    box: tuple[float, float, float, float]
    out: tuple[int, int]
    _base: Image.Image | None = None
    _reduced: dict[int, Image.Image] = field(default_factory=dict)

    @property
    def centre(self) -> tuple[float, float]:
        left, top, right, bottom = self.box
        return (left + right) / 2, (top + bottom) / 2

    @property
    def scale(self) -> tuple[float, float]:
        """Source pixels per output pixel, across and down."""
        left, top, right, bottom = self.box
        return (right - left) / self.out[0], (bottom - top) / self.out[1]

    def reduced(self, factor: int) -> Image.Image:
        """The decoded image shrunk by an integer factor (box filter), computed once."""
        if factor == 1:
            return self.image
        if factor not in self._reduced:
            self._reduced[factor] = self.image.reduce(factor)
        return self._reduced[factor]

    @property
    def base(self) -> Image.Image:
        """The frame at output size, computed once and shared by the variants that need it."""
        if self._base is None:
            if self.image.size == self.out and self.box == (0, 0, *self.out):
                self._base = self.image
            else:
                self._base = sample(self, self.centre, self.scale, density=BASE_DENSITY)
        return self._base


def make_frame(image: Image.Image, size: int | None) -> Frame:
    w, h = image.size
    if size is None:
        return Frame(image, (0, 0, w, h), (w, h))
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return Frame(image, (left, top, left + side, top + side), (size, size))


def sample(frame: Frame, centre: tuple[float, float], scale: tuple[float, float], angle: float = 0.0,
           density: float = SAMPLE_DENSITY) -> Image.Image:
    """Resample the decoded image onto the output grid (resize, rotate, crop): one interpolation.

    Output pixel p comes from centre + R(angle) diag(scale) (p - out/2) in the decoded
    image. Shrinking, the region is point-sampled (nearest neighbour) on a grid k = 2 or 3
    times finer than the output, `density` samples per source pixel where 3 x 3 allows, and
    each k x k block is averaged (reduce()); shrinking more than MAX_GRID times, the source
    is first reduce()d by an integer factor. Pillow's nearest-neighbour resize and
    transform and its reduce() are its cheapest resampling kernels. Against a Lanczos
    reference (bench photos, shrinking 1.2-4.5x) the 2 x 2 grid scores 31-38 dB, 3 x 3
    34-40 dB, Pillow's area-aware bilinear resize 37-38.5 dB at 1.5x the cost of 3 x 3.
    Enlarging, bilinear is the filter.
    """
    out_w, out_h = frame.out
    shrink = math.ceil(max(scale) / MAX_GRID)
    source = frame.reduced(shrink)
    sx, sy = scale[0] / shrink, scale[1] / shrink
    k = 1 if min(sx, sy) < 1 else 2 if density * max(sx, sy) <= 2 else 3
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = centre[0] / shrink, centre[1] / shrink
    if angle == 0:  # resize() is twice as fast as transform()
        left, top = cx - sx * out_w / 2, cy - sy * out_h / 2
        width, height = source.size  # clamped: rounding must not push the box an ulp outside
        box = (max(0.0, left), max(0.0, top), min(width, left + sx * out_w), min(height, top + sy * out_h))
        if k == 1:
            return source.resize((out_w, out_h), RESAMPLE, box=box)
        return source.resize((out_w * k, out_h * k), Image.Resampling.NEAREST, box=box).reduce(k)
    a, b, d, e = cos * sx / k, sin * sy / k, -sin * sx / k, cos * sy / k   # source step per grid step
    ox, oy = out_w * k / 2, out_h * k / 2                                  # centre of the grid
    data = (a, b, cx - a * ox - b * oy, d, e, cy - d * ox - e * oy)
    if k == 1:
        return source.transform((out_w, out_h), Image.Transform.AFFINE, data, resample=RESAMPLE)
    grid = source.transform((out_w * k, out_h * k), Image.Transform.AFFINE, data,
                            resample=Image.Resampling.NEAREST)
    return grid.reduce(k)


def _rotate(frame: Frame, rng: random.Random) -> Image.Image:
    """Rotate about the centre, zoomed just enough that the frame stays covered (no empty corners).

    Sampled from the decoded image, not from the resized base: one interpolation, not two.
    """
    angle = math.radians(rng.uniform(-ROTATE_DEGREES, ROTATE_DEGREES))
    out_w, out_h = frame.out
    c, s = abs(math.cos(angle)), abs(math.sin(angle))
    zoom = max((out_w * c + out_h * s) / out_w, (out_w * s + out_h * c) / out_h)
    sx, sy = frame.scale
    return sample(frame, frame.centre, (sx / zoom, sy / zoom), angle)


def _crop(frame: Frame, rng: random.Random) -> Image.Image:
    """A random region of the frame, cut from the decoded image and scaled to the output size."""
    left, top, right, bottom = frame.box
    fw, fh = right - left, bottom - top
    side = rng.uniform(*CROP_SIDE)
    aspect = math.exp(rng.uniform(math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1])))
    cw, ch = min(fw, fw * side * math.sqrt(aspect)), min(fh, fh * side / math.sqrt(aspect))
    x, y = left + rng.uniform(0, fw - cw), top + rng.uniform(0, fh - ch)
    return sample(frame, (x + cw / 2, y + ch / 2), (cw / frame.out[0], ch / frame.out[1]))


def _blur(frame: Frame, rng: random.Random) -> Image.Image:
    radius = rng.uniform(*BLUR_RADIUS) * max(1.0, min(frame.out) / 256)
    # A box blur (one pass): as good an augmentation as a Gaussian, at a third of Pillow's cost.
    return frame.base.filter(ImageFilter.BoxBlur(radius))


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2 weights, as Pillow's convert("L") and ImageEnhance use
_GREY_OF_BIN = [LUMA[c] * i for c in range(3) for i in range(256)]  # what bin i of RGB histogram() adds


def _color(frame: Frame, rng: random.Random) -> Image.Image:
    """Saturation: every pixel moved away from (factor > 1) or toward its own grey.

    One 3x3 colour-matrix pass; ImageEnhance.Color makes a grey image and blends (three).
    """
    f = rng.uniform(*COLOR_FACTOR)
    matrix = [f * (row == col) + (1 - f) * LUMA[col] if col < 3 else 0.0 for row in range(3) for col in range(4)]
    return frame.base.convert("RGB", matrix)


def _levels(frame: Frame, gain: float, pivot: float) -> Image.Image:
    """Every channel value v becomes pivot + gain (v - pivot): one colour-matrix pass, rounded and clipped.

    (A lookup table through point() is the same pass, but Pillow first rounds its 768 entries in
    Python: a tenth of a millisecond a variant.)
    """
    offset = pivot * (1 - gain)
    return frame.base.convert("RGB", (gain, 0, 0, offset, 0, gain, 0, offset, 0, 0, gain, offset))


def mean_grey(image: Image.Image) -> float:
    """The mean luma, from the channel histograms: no grey image is made."""
    return sum(map(operator.mul, image.histogram(), _GREY_OF_BIN)) / (image.width * image.height)


def _contrast(frame: Frame, rng: random.Random) -> Image.Image:
    """Contrast about the image's mean grey (ImageEnhance.Contrast's pivot, to rounding)."""
    return _levels(frame, rng.uniform(*CONTRAST_FACTOR), mean_grey(frame.base))


def _brightness(frame: Frame, rng: random.Random) -> Image.Image:
    return _levels(frame, rng.uniform(*BRIGHTNESS_FACTOR), 0.0)


TRANSFORMS: dict[str, Callable[[Frame, random.Random], Image.Image]] = {
    "original": lambda frame, rng: frame.base,
    "flip": lambda frame, rng: frame.base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "rotate": _rotate,
    "crop": _crop,
    "blur": _blur,
    "color": _color,
    "contrast": _contrast,
    "brightness": _brightness,
}


def encode(image: Image.Image, fmt: str) -> bytes:
    """Fixed settings and no metadata: the same pixels always give the same bytes.

    JPEG goes straight to Pillow's encoder (tobytes): the very bytes save() writes with
    these settings (a test checks it), without save()'s option handling, which costs a
    twentieth of encoding a 224 x 224 image, seven times per source.
    """
    if fmt == "jpeg":
        return image.tobytes("jpeg", image.mode, JPEG_QUALITY)
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def decode_size(spec: AugmentSpec) -> int | None:
    """Smallest shorter side the decoder must keep so that no variant upsamples."""
    if spec.size is None:
        return None
    if "crop" in spec.variants:
        return math.ceil(spec.size / CROP_MIN_SIDE)
    return spec.size


def augment_image(data: bytes, relative: str, spec: AugmentSpec) -> list[tuple[str, bytes]]:
    """All outputs of one source as (file-name suffix, encoded bytes); ImageError if unusable."""
    image = open_image(data, max_pixels=spec.max_pixels, min_size=decode_size(spec))
    frame = make_frame(image, spec.size)
    outputs = []
    for variant, copy, suffix in output_names(spec):
        rng = random.Random(variant_seed(spec.seed, relative, variant, copy))
        outputs.append((suffix, encode(TRANSFORMS[variant](frame, rng), spec.format)))
    return outputs

