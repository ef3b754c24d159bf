"""Where things live, chosen in one place from the environment.

The same three variables configure the handlers (set by template.yaml on AWS, or by the
local invoker for its worker processes) and the orchestrator (which may override them
from the command line or from a CloudFormation stack's outputs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

ENV_HOME = "DLPIPE_HOME"
ENV_DATA = "DLPIPE_DATA_URL"
ENV_MODELS = "DLPIPE_MODEL_URL"
ENV_TABLE = "DLPIPE_TABLE_URL"


def _absolute(url: str) -> str:
    """Make directory paths absolute so worker processes resolve them the same way."""
    if "://" in url and not url.startswith("file://"):
        return url
    path = url[len("file://"):] if url.startswith("file://") else url
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
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        home = env.get(ENV_HOME, ".dlpipe")
        return cls(
            data_url=_absolute(env.get(ENV_DATA) or f"{home}/data"),
            model_url=_absolute(env.get(ENV_MODELS) or f"{home}/models"),
            table_url=_absolute_table(env.get(ENV_TABLE) or f"sqlite:///{home}/predictions.sqlite"),
        )

    def with_overrides(self, data_url: str | None = None, model_url: str | None = None,
                       table_url: str | None = None) -> "Settings":
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


# --- where the orchestrator runs: defaults of its command-line options ---------------------
# orchestrator.session offers each of these as the default of one option (named in --help);
# the command line wins. Only the orchestrator reads them: the handlers need the three URLs above.

ENV_STACK_NAME = "DLPIPE_STACK_NAME"
ENV_INVOKER = "DLPIPE_INVOKER"
DEFAULT_HOME = ".dlpipe"


@dataclass(frozen=True)
class Placement:
    """What `--home`, `--stack-name`, `--data`, `--models`, `--table` and `--invoker` default to."""

    home: str = DEFAULT_HOME
    stack_name: str | None = None
    data_url: str | None = None
    model_url: str | None = None
    table_url: str | None = None
    invoker: str | None = None

    # The variable behind each field, for the options' help.
    ENV = {"home": ENV_HOME, "stack_name": ENV_STACK_NAME, "data_url": ENV_DATA, "model_url": ENV_MODELS,
           "table_url": ENV_TABLE, "invoker": ENV_INVOKER}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Placement:
        """Set, non-empty variables only: `DLPIPE_STACK_NAME=` is the same as not set."""
        env = os.environ if env is None else env
        values = {name: env.get(variable) or None for name, variable in cls.ENV.items()}
        return cls(**{**values, "home": values["home"] or DEFAULT_HOME})
