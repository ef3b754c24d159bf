"""The preprocessing recipe: how an image becomes a model input.

A recipe is stored with every servable model version and is also what `prepare` uses to
turn training images into arrays, so training and serving cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

RESIZE_MODES = ("stretch", "center_crop")


@dataclass(frozen=True)
class Recipe:
    size: int                                  # the model input is size x size
    channels: int = 3                          # 3 = colour, 1 = greyscale
    color_order: str = "RGB"                   # channel order the model expects: RGB or BGR
    resize: str = "stretch"                    # stretch to size, or shorter side then center crop
    resize_shorter: int | None = None          # center_crop: shorter side length before cropping
    pad: int = 0                               # stretch: resize to size - 2*pad, then zero-pad
    scale: float = 1.0 / 255.0                 # pixel values 0..255 are multiplied by this...
    mean: tuple[float, ...] = field(default=(0.0,))   # ...then this is subtracted per channel...
    std: tuple[float, ...] = field(default=(1.0,))    # ...and the result divided by this

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.color_order not in ("RGB", "BGR"):
            raise ValueError(f"color_order must be RGB or BGR, got {self.color_order!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.size - 2 * self.pad < 1:
            raise ValueError(f"pad {self.pad} leaves no image inside size {self.size}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        data = dict(data)
        for name in ("mean", "std"):
            if name in data:
                data[name] = tuple(float(v) for v in data[name])
        return cls(**data)

    def resize_image(self, image):
        """PIL image (already RGB or L) to the recipe's geometry, as uint8 H x W x C."""
        from PIL import Image

        image = image.convert("L" if self.channels == 1 else "RGB")
        if self.resize == "center_crop":
            shorter = self.resize_shorter or self.size
            w, h = image.size
            ratio = shorter / min(w, h)
            image = image.resize((max(shorter, round(w * ratio)), max(shorter, round(h * ratio))),
                                 Image.Resampling.BILINEAR)
            w, h = image.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        else:
            inner = self.size - 2 * self.pad
            if image.size != (inner, inner):
                image = image.resize((inner, inner), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        if self.pad:
            array = np.pad(array, ((self.pad, self.pad), (self.pad, self.pad), (0, 0)))
        if self.color_order == "BGR":
            array = array[:, :, ::-1]
        return array

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 arrays (... x H x W x C) from `resize_image` to the model's float input."""
        x = pixels.astype(np.float32) * np.float32(self.scale)
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def apply(self, image) -> np.ndarray:
        """PIL image to a float32 H x W x C model input."""
        return self.normalize(self.resize_image(image))
