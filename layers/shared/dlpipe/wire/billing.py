"""What every function's reply says it cost beyond its compute: the store requests it made."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StoreRequests(BaseModel):
    """The data- and model-store requests of one invocation, as S3 bills them (dlpipe.shared.counted).

    Filled in by dlpipe.shared.events for every reply that carries it; the orchestrator prices them.
    """

    model_config = ConfigDict(extra="forbid")

    put: int = Field(0, ge=0)
    get: int = Field(0, ge=0)
    list: int = Field(0, ge=0)
    head: int = Field(0, ge=0)
    delete: int = Field(0, ge=0)
