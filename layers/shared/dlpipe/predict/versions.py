"""The model registry: versions in the model store, their keys, which is latest, reading and writing them.

Serving reads versions here; `dlpipe.publish.export` (and import-onnx) writes them here. A
servable model version is a directory of the model store:

    models/<name>/<version>/model.tflite    the float32 network, image in, probabilities out
    models/<name>/<version>/labels.json     class names in output order
    models/<name>/<version>/recipe.json     the preprocessing recipe (dlpipe.shared.recipe.Recipe)
    models/<name>/<version>/meta.json       source, creation time, input shape, classes (written last)
    models/<name>/latest                    the version served by default (written after the version)

Messages name models and versions, never the store's URL: they reach the predict function's
callers (see `dlpipe.wire.ServingError`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from dlpipe.shared.names import validate_name
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import KeyNotFound, ObjectStore, join_key
from dlpipe.wire import ModelError, ModelInfo, NotFound

MODELS_PREFIX = "models"
LATEST = "latest"


def version_key(name: str, version: str, filename: str) -> str:
    return join_key(MODELS_PREFIX, validate_name(name, "model name"), validate_name(version, "model version"), filename)


def latest_key(name: str) -> str:
    return join_key(MODELS_PREFIX, validate_name(name, "model name"), LATEST)


def list_models(store: ObjectStore) -> dict[str, list[str]]:
    """{model name: [complete versions, oldest first]}; a version is complete once meta.json exists."""
    models: dict[str, list[str]] = {}
    for key in store.list(f"{MODELS_PREFIX}/"):
        parts = key.split("/")
        if len(parts) == 4 and parts[3] == "meta.json":
            models.setdefault(parts[1], []).append(parts[2])
    return {name: sorted(versions, key=version_sort_key) for name, versions in sorted(models.items())}


def version_sort_key(version: str) -> tuple:
    """v2 before v10; non-numbered versions after numbered ones, alphabetically."""
    match = re.fullmatch(r"v?(\d+)", version)
    return (0, int(match.group(1)), "") if match else (1, 0, version)


def latest_version(store: ObjectStore, name: str) -> str:
    """The version `models/<name>/latest` points at; NotFound naming what exists otherwise."""
    try:
        version = store.get(latest_key(name)).decode("utf-8").strip()
    except KeyNotFound:
        known = sorted(list_models(store))
        raise NotFound(f"unknown model {name!r}; "
                       + (f"known models: {', '.join(known)}" if known else
                          "no models yet: run `orchestrator export` or `orchestrator import-onnx`")) from None
    try:
        return validate_name(version, "model version")
    except ValueError as err:
        raise ModelError(f"model {name!r}: its latest pointer names no version: {err}") from None


def next_version(store: ObjectStore, name: str) -> str:
    """v1, v2, ...: one more than the highest numbered version of `name`."""
    numbers = [int(v[1:]) for v in list_models(store).get(name, []) if re.fullmatch(r"v\d+", v)]
    return f"v{max(numbers, default=0) + 1}"


def write_version(store: ObjectStore, name: str, version: str, files: Mapping[str, bytes], meta: dict,
                  make_latest: bool = True) -> None:
    """Write a version's files, then meta.json (which marks it complete), then (if asked) the latest pointer.

    That order keeps readers safe: a version is listed only once all its files are there.
    """
    for filename, data in files.items():
        store.put(version_key(name, version, filename), data)
    store.put(version_key(name, version, "meta.json"), json.dumps(meta, indent=2).encode())
    if make_latest:
        store.put(latest_key(name), version.encode())


def set_latest(store: ObjectStore, name: str, version: str) -> None:
    """Point `models/<name>/latest` at an existing version (a rollback)."""
    if version not in list_models(store).get(name, []):
        raise NotFound(f"model {name!r} has no complete version {version!r}")
    store.put(latest_key(name), version.encode())


def read_recipe(store: ObjectStore, name: str, version: str) -> Recipe:
    """The version's preprocessing; KeyNotFound if it has none, ValueError if it is not a recipe."""
    return Recipe.from_dict(json.loads(store.get(version_key(name, version, "recipe.json"))))


def read_meta(store: ObjectStore, name: str, version: str) -> dict:
    try:
        return json.loads(store.get(version_key(name, version, "meta.json")))
    except KeyNotFound:
        versions = list_models(store).get(name)
        if versions is None:
            raise NotFound(f"unknown model {name!r}") from None
        raise NotFound(f"model {name!r} has no version {version!r}; versions: {', '.join(versions)}") from None


@dataclass
class ModelVersion:
    """The files of one servable model version, read from the store."""

    name: str
    version: str
    tflite: bytes
    labels: list[str]
    recipe: Recipe
    meta: dict = field(default_factory=dict)

    def info(self) -> ModelInfo:
        return ModelInfo(name=self.name, version=self.version)


def load_version(store: ObjectStore, name: str, version: str | None = None) -> ModelVersion:
    """Read a model version (default: latest) from the model store."""
    version = version or latest_version(store, name)
    meta = read_meta(store, name, version)
    try:
        tflite = store.get(version_key(name, version, "model.tflite"))
        labels = json.loads(store.get(version_key(name, version, "labels.json")))
        recipe = read_recipe(store, name, version)
    except KeyNotFound as err:
        missing = err.key.rsplit("/", 1)[-1]
        raise ModelError(f"model {name!r} version {version!r} is incomplete: it has no {missing}") from None
    except (ValueError, TypeError) as err:
        raise ModelError(f"model {name!r} version {version!r} has an unreadable labels or recipe file: {err}") from None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ModelError(f"model {name!r} version {version!r}: labels.json must be a list of strings")
    return ModelVersion(name, version, tflite, labels, recipe, meta)
