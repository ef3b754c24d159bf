"""The preprocessing recipe: how an image becomes a model input.

A recipe is stored with every servable model version and is also what `prepare` uses to
turn training images into arrays, so training and serving cannot drift apart: both decode
with `decode` (dlpipe.shared.images.open_image, then `resize_image`).

Recipes arrive from files and events, so they are validated: unknown fields, impossible
geometry and values a model cannot use are refused with the field named.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dlpipe.shared.problems import describe_errors

RESIZE_MODES = ("stretch", "center_crop")
# A 1024 x 1024 x 3 input is 3 MB as uint8 and 12 MB as float32 per image: beyond it a
# batch of SqueezeNet activations no longer fits a 10 GB function. Resizing to a shorter
# side over 4096 px only costs time before a crop to at most 1024.
MAX_SIZE = 1024
MAX_RESIZE_SHORTER = 4096

Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Recipe(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(ge=1, le=MAX_SIZE, description="the model input is size x size")
    channels: Literal[1, 3] = Field(default=3, description="3 = colour, 1 = greyscale")
    color_order: Literal["RGB", "BGR"] = Field(default="RGB", description="channel order the model expects")
    resize: Literal["stretch", "center_crop"] = Field(
        default="stretch", description="stretch to size, or shorter side then center crop")
    resize_shorter: int | None = Field(default=None, ge=1, le=MAX_RESIZE_SHORTER,
                                       description="center_crop: shorter side length before cropping")
    pad: int = Field(default=0, ge=0, description="stretch: resize to size - 2*pad, then zero-pad")
    scale: Positive = Field(default=1.0 / 255.0, description="pixel values 0..255 are multiplied by this...")
    mean: tuple[Finite, ...] = Field(default=(0.0,), min_length=1, max_length=3,
                                     description="...then this is subtracted per channel...")
    std: tuple[Positive, ...] = Field(default=(1.0,), min_length=1, max_length=3,
                                      description="...and the result divided by this")

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.size - 2 * self.pad < 1:
            raise ValueError(f"pad {self.pad} leaves no image inside size {self.size}")
        for name in ("mean", "std"):
            if len(getattr(self, name)) not in (1, self.channels):
                raise ValueError(f"{name} needs one value for all channels or one per channel "
                                 f"({self.channels}), got {len(getattr(self, name))}")
        if self.resize == "center_crop" and self.resize_shorter is not None and self.resize_shorter < self.size:
            raise ValueError(f"resize_shorter {self.resize_shorter} is smaller than the crop size {self.size}")
        return self

    def to_dict(self) -> dict:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        """A recipe from its stored form; ValueError naming the bad field(s) otherwise."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ValueError(f"invalid recipe: {describe_errors(err)}") from None

    @property
    def decode_size(self) -> int:
        """The shorter side an image needs before `resize_image`: what JPEG decoding may scale down to."""
        if self.resize == "center_crop":
            return self.resize_shorter or self.size
        return self.size

    def decode(self, data: bytes) -> np.ndarray:
        """Image file bytes to uint8 H x W x C, as serving preprocesses them; ImageError if unusable."""
        from dlpipe.shared.images import open_image

        return self.resize_image(open_image(data, min_size=self.decode_size))

    def resize_image(self, image) -> np.ndarray:
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

