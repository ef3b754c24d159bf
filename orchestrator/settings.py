"""The orchestrator's own settings from the environment: its options' defaults, downloads, the model zoo.

Only the orchestrator reads these (the functions' environment is dlpipe.shared.config).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from dlpipe.shared.config import ENV_DATA, ENV_HOME, ENV_MODELS, ENV_TABLE

ENV_CACHE = "DLPIPE_CACHE"                    # downloads (Fashion-MNIST, the model zoo), default ~/.cache/dlpipe

# --- where the orchestrator runs: defaults of its command-line options ---------------------
# orchestrator.session offers each of these as the default of one option (named in --help);
# the command line wins. The handlers need only the three URLs (dlpipe.shared.config.Settings).

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
    ENV: ClassVar[dict[str, str]] = {"home": ENV_HOME, "stack_name": ENV_STACK_NAME, "data_url": ENV_DATA,
                                     "model_url": ENV_MODELS, "table_url": ENV_TABLE, "invoker": ENV_INVOKER}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Placement:
        """Set, non-empty variables only: `DLPIPE_STACK_NAME=` is the same as not set."""
        env = os.environ if env is None else env
        values = {name: env.get(variable) or None for name, variable in cls.ENV.items()}
        return cls(**{**values, "home": values["home"] or DEFAULT_HOME})


def download_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where downloaded datasets are kept between runs."""
    env = os.environ if env is None else env
    return Path(env.get(ENV_CACHE) or Path.home() / ".cache" / "dlpipe")


# Pretrained models for `orchestrator fetch-model`: the ONNX model zoo's image classifiers
# (files under <base>/squeezenet/model/, class names in <base>/synset.txt). A mirror, or a
# test's local server, takes its place through the variable.
ENV_MODEL_ZOO = "DLPIPE_MODEL_ZOO_URL"
DEFAULT_MODEL_ZOO_URL = "https://github.com/onnx/models/raw/main/validated/vision/classification"


def model_zoo_url(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return (env.get(ENV_MODEL_ZOO) or DEFAULT_MODEL_ZOO_URL).rstrip("/")


# Without --verbose, the local invoker's worker processes write their output (TensorFlow's
# C++ logging goes straight to file descriptor 2) to this file instead of the console.
ENV_WORKER_LOG = "DLPIPE_WORKER_LOG"
