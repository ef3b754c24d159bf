"""The augment function's event and reply."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dlpipe.shared.images import DEFAULT_MAX_PIXELS
from dlpipe.shared.store import InvalidKey, validate_prefix
from dlpipe.wire.billing import StoreRequests

# --- augment ------------------------------------------------------------------------

DETERMINISTIC_VARIANTS = ("original", "flip")
RANDOM_VARIANTS = ("rotate", "crop", "blur", "color", "contrast", "brightness")
VARIANTS = DETERMINISTIC_VARIANTS + RANDOM_VARIANTS
DEFAULT_VARIANTS = ("original", "flip", "rotate", "crop", "blur", "color", "contrast")
MAX_BATCH = 1000
SHARD_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class AugmentSpec(BaseModel):
    """What to make of each source image. Unknown fields are refused: a misspelt `size` must not pass
    unnoticed and give full-size outputs."""

    model_config = ConfigDict(extra="forbid")

    variants: list[str] = Field(default_factory=lambda: list(DEFAULT_VARIANTS), min_length=1)
    seed: int = 0
    size: int | None = Field(default=None, ge=8, le=4096,
                             description="outputs are size x size (centre square, scaled); None keeps the source size")
    format: Literal["jpeg", "png"] = "jpeg"
    copies: int = Field(default=1, ge=1, le=32, description="outputs per random variant, each with its own seed")
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1, description="larger sources are refused unread")

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"variants listed twice in {value}; use copies for several random versions")
        return value


# The one prefix augment may write under: its role on AWS can write nowhere else (template.yaml),
# so neither your originals (upload) nor prepared datasets can be overwritten by an augment job.
AUGMENTED_PREFIX = "augmented"


def check_augment_output(prefix: str) -> str:
    """`prefix` if augment may write there; ValueError saying where it may otherwise."""
    if prefix != AUGMENTED_PREFIX and not prefix.startswith(AUGMENTED_PREFIX + "/"):
        raise ValueError(f"augment writes only under '{AUGMENTED_PREFIX}/' (on AWS its role may write nowhere "
                         f"else), not {prefix!r}: use --output {AUGMENTED_PREFIX} or {AUGMENTED_PREFIX}/NAME")
    return prefix


class AugmentRequest(BaseModel):
    """The augment function's event: a batch of source keys and what to make of them."""

    model_config = ConfigDict(extra="forbid")

    keys: list[str] = Field(min_length=1, max_length=MAX_BATCH)
    source_prefix: str = Field(description="keys are under this prefix; the rest of the path is kept")
    output_prefix: str = Field(min_length=1)
    spec: AugmentSpec = Field(default_factory=AugmentSpec)
    shard: str | None = Field(default=None, pattern=SHARD_NAME,
                              description="pack the outputs into tar shards (WebDataset layout) named "
                                          "<output_prefix>/<shard>.tar (then <shard>-1.tar, ... if large) "
                                          "instead of writing a file per output")

    @field_validator("source_prefix", "output_prefix")
    @classmethod
    def _relative_prefix(cls, value: str) -> str:
        """A trailing '/' is dropped; an absolute prefix or a '..' is refused, never rewritten into another place."""
        if value.startswith("/"):
            raise ValueError(f"prefix {value!r} is absolute; prefixes are folders inside the store, "
                             "relative to its root (no leading '/')")
        value = value.rstrip("/")
        try:
            return validate_prefix(value)
        except InvalidKey as err:
            raise ValueError(f"not a folder inside the store: {err}") from None

    @field_validator("output_prefix")
    @classmethod
    def _where_augment_may_write(cls, value: str) -> str:
        return check_augment_output(value)


class ImageResult(BaseModel):
    key: str
    outputs: list[str] = Field(default_factory=list, description="keys written; packed: member names in `shard`")
    shard: str | None = None
    error: str | None = None


class ShardInfo(BaseModel):
    """A tar shard the batch wrote, and what it holds."""

    key: str
    bytes: int
    samples: int                  # source images
    images: int                   # outputs: tar members
    classes: dict[str, int] = Field(default_factory=dict, description="outputs per class folder")


class AugmentResponse(BaseModel):
    statusCode: Literal[200] = 200
    results: list[ImageResult]
    images_in: int
    images_out: int
    failed: int
    bytes_out: int
    shards: list[ShardInfo] = Field(default_factory=list)
    requests: StoreRequests = Field(default_factory=StoreRequests)
