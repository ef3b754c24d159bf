"""The functions' environment: where things live, and how a warm container runs.

The same three variables configure the handlers (set by template.yaml on AWS, or by the
local invoker for its worker processes) and the orchestrator (which may override them
from the command line or from a CloudFormation stack's outputs). The train workers' shard
cache and the predict function's settings are read here too. What only the orchestrator
reads (its placement options, downloads, the model zoo, the worker log) is in
orchestrator.settings.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "DLPIPE_HOME"
ENV_DATA = "DLPIPE_DATA_URL"
ENV_MODELS = "DLPIPE_MODEL_URL"
ENV_TABLE = "DLPIPE_TABLE_URL"
ENV_SHARD_CACHE = "DLPIPE_SHARD_CACHE"        # warm train workers' copies of packed parts
ENV_SHARD_CACHE_MB = "DLPIPE_SHARD_CACHE_MB"
# Leave room in Lambda's /tmp (512 MB unless the function asks for more) for the weights.
DEFAULT_SHARD_CACHE_MB = 384.0


def _absolute(url: str) -> str:
    """Make directory paths absolute so worker processes resolve them the same way."""
    if "://" in url and not url.startswith("file://"):
        return url
    path = url.removeprefix("file://")
    return str(Path(path).expanduser().resolve())


def _absolute_table(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(url[len("sqlite:///"):]).expanduser().resolve())
    return url


@dataclass(frozen=True)
class Settings:
    """URLs of the data store, the model store and the predictions table."""

    data_url: str
    model_url: str
    table_url: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = env.get(ENV_HOME, ".dlpipe")
        return cls(
            data_url=_absolute(env.get(ENV_DATA) or f"{home}/data"),
            model_url=_absolute(env.get(ENV_MODELS) or f"{home}/models"),
            table_url=_absolute_table(env.get(ENV_TABLE) or f"sqlite:///{home}/predictions.sqlite"),
        )

    def with_overrides(self, data_url: str | None = None, model_url: str | None = None,
                       table_url: str | None = None) -> Settings:
        return Settings(
            data_url=_absolute(data_url) if data_url else self.data_url,
            model_url=_absolute(model_url) if model_url else self.model_url,
            table_url=_absolute_table(table_url) if table_url else self.table_url,
        )

    def to_env(self) -> dict[str, str]:
        return {ENV_DATA: self.data_url, ENV_MODELS: self.model_url, ENV_TABLE: self.table_url}

    def data_store(self):
        from dlpipe.shared.store import open_store

        return open_store(self.data_url)

    def model_store(self):
        from dlpipe.shared.store import open_store

        return open_store(self.model_url)


@dataclass(frozen=True)
class ShardCache:
    """A warm train worker's copy of packed parts in /tmp: its folder and its size limit."""

    folder: Path
    limit_bytes: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ShardCache:
        env = os.environ if env is None else env
        text = env.get(ENV_SHARD_CACHE_MB) or str(DEFAULT_SHARD_CACHE_MB)
        try:
            megabytes = float(text)
        except ValueError:
            megabytes = -1.0
        if not (math.isfinite(megabytes) and megabytes >= 0):
            raise ValueError(f"{ENV_SHARD_CACHE_MB} must be a number of megabytes >= 0, got {text!r}")
        folder = env.get(ENV_SHARD_CACHE) or Path(tempfile.gettempdir()) / "dlpipe-shards"
        return cls(folder=Path(folder), limit_bytes=int(megabytes * 2 ** 20))


ENV_PREDICT_THREADS = "DLPIPE_PREDICT_THREADS"
ENV_LATEST_TTL = "DLPIPE_LATEST_TTL_S"


def _number(env: Mapping[str, str], name: str, default: str, kind: type, least: float) -> int | float:
    text = env.get(name) or default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value < least:
        raise ValueError(f"{name}={text!r}: expected {'an integer' if kind is int else 'a number'} of at least {least}")
    return value


@dataclass(frozen=True)
class ServingSettings:
    """How a warm predict container runs: LiteRT threads, and how long it trusts `latest`."""

    predict_threads: int = 1
    latest_ttl_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingSettings:
        env = os.environ if env is None else env
        return cls(predict_threads=int(_number(env, ENV_PREDICT_THREADS, "1", int, 1)),
                   latest_ttl_s=float(_number(env, ENV_LATEST_TTL, "10", float, 0)))
