"""Servable model versions as starting points for training (`orchestrator train --init-from`).

`export` and `import-onnx` store, beside model.tflite, the version's Keras weights
(weights.npz) and its ModelConfig (model.json). Versions written before that still serve,
but cannot seed a run: the error says how to make one that can.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlpipe.predict.versions import latest_version, read_meta, version_key
from dlpipe.shared.names import validate_name
from dlpipe.shared.store import KeyNotFound
from dlpipe.train.weights import CheckpointError
from dlpipe.wire import ModelConfig, NotFound


@dataclass(frozen=True)
class StartingPoint:
    name: str
    version: str
    config: ModelConfig
    weights_key: str
    weights_sha256: str


def parse_ref(text: str) -> tuple[str, str | None]:
    """`MODEL` or `MODEL:VERSION` (a missing version means the model's latest)."""
    name, _, version = text.partition(":")
    validate_name(name, "model name")
    return name, validate_name(version, "model version") if version else None


def starting_point(store, ref: str) -> StartingPoint:
    """The version `ref` names, with its weights and config; CheckpointError saying what to do otherwise."""
    try:
        name, version = parse_ref(ref)
        version = version or latest_version(store, name)
        meta = read_meta(store, name, version)
    except (ValueError, NotFound) as err:
        raise CheckpointError(f"--init-from {ref}: {err}") from None
    try:
        config = ModelConfig.model_validate_json(store.get(version_key(name, version, "model.json")))
    except KeyNotFound:
        how = (f"`orchestrator export --run {meta['source']['run']}`" if meta.get("source", {}).get("kind") == "run"
               else "`orchestrator import-onnx FILE`")
        raise CheckpointError(f"model {name} {version} serves, but was written before versions kept their Keras "
                              f"weights, so no run can start from it: make a new version with {how}") from None
    key = version_key(name, version, "weights.npz")
    if not store.exists(key):
        raise CheckpointError(f"model {name} {version} has no weights.npz; re-export or re-import it")
    return StartingPoint(name, version, config, key, meta.get("weights_sha256", ""))
