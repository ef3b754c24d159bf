"""The predict function's event and reply."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dlpipe.shared.names import NAME_PATTERN
from dlpipe.shared.store import InvalidKey, validate_key
from dlpipe.wire.billing import StoreRequests
from dlpipe.wire.errors import BadRequest

# Lambda refuses synchronous request payloads over 6 MB; the base64 text has to fit in that.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
MAX_IMAGE_B64_CHARS = MAX_PAYLOAD_BYTES - 4096
MAX_TOP_K = 100


# --- predict ------------------------------------------------------------------------

class PredictRequest(BaseModel):
    """The predict function's event. The orchestrator builds events from this same model.

    Exactly one image source: `key` (an object in the data store) or `image_b64` (the
    image file's bytes, base64-encoded, within Lambda's 6 MB payload limit).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(pattern=NAME_PATTERN, description="model name in the model store")
    version: str | None = Field(default=None, pattern=NAME_PATTERN,
                                description="model version; default: the model's latest")
    key: str | None = Field(default=None, max_length=1024, description="data-store key of the image")
    image_b64: str | None = Field(default=None, description="the image file's bytes, base64")
    name: str | None = Field(default=None, max_length=256,
                             description="display name of the image (e.g. its file name), for messages")
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K)
    request_id: str | None = Field(default=None, max_length=128,
                                   description="client's id: a retried request with the same id is recorded once")

    @field_validator("image_b64")
    @classmethod
    def _fits_a_request(cls, value: str | None) -> str | None:
        if value is not None and len(value) > MAX_IMAGE_B64_CHARS:
            raise ValueError(f"the inline image is {len(value) / 1e6:.1f} MB of base64, more than a Lambda request "
                             "can carry (6 MB): put it in the data store and send its key")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> PredictRequest:
        if (self.key is None) == (self.image_b64 is None):
            raise ValueError("give exactly one image source: 'key' (data-store key) or 'image_b64'")
        if self.key is not None:
            try:
                validate_key(self.key)
            except InvalidKey as err:
                raise ValueError(str(err)) from None
        return self

    @property
    def label(self) -> str:
        """How messages name the image."""
        return self.name or self.key or "image"

    def image_bytes(self) -> bytes:
        """The decoded inline image; BadRequest if it is not base64.

        Accepted as the usual tools write it: wrapped in lines (`base64` wraps at 76),
        unpadded, or in the URL-safe alphabet ('-' and '_' for '+' and '/'), not mixed.
        """
        text = "".join((self.image_b64 or "").split())
        urlsafe = "-" in text or "_" in text
        try:
            if urlsafe and ("+" in text or "/" in text):
                raise ValueError("two base64 alphabets mixed")
            return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if urlsafe else None,
                                    validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"image_b64 of {self.label!r} is not valid base64") from None


class TopClass(BaseModel):
    label: str
    index: int
    probability: float


class ModelInfo(BaseModel):
    name: str
    version: str


class PredictResponse(BaseModel):
    """The predict function's answer to a request it served (README documents this shape)."""

    model_config = ConfigDict(protected_namespaces=())

    statusCode: Literal[200] = 200
    id: str = Field(description="the prediction's record in the predictions table")
    model: ModelInfo
    image: str = Field(description="how the request named the image")
    top: list[TopClass] = Field(description="most probable first")
    latency_ms: float = Field(description="reading, decoding, preprocessing and inference")
    model_load_ms: float = Field(description="loading the model, on a container's first request for it; else 0")
    duplicate: bool = Field(description="a retried request: recorded before, not again")
    requests: StoreRequests = Field(default_factory=StoreRequests)
