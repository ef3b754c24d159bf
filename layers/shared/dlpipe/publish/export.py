"""Export: a Keras model becomes a servable model version in the model store.

The version holds everything the predict function needs and nothing that needs
TensorFlow: the float32 LiteRT flatbuffer, the labels, the preprocessing recipe and a
meta.json. Only the orchestrator runs this module (TensorFlow is imported lazily); the
layout is described in `dlpipe.predict.versions`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from dlpipe.predict.classifier import LiteRTNetwork
from dlpipe.predict.versions import MODELS_PREFIX, next_version, version_key, write_version
from dlpipe.shared.names import validate_name
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import ObjectStore
from dlpipe.train.weights import weights_to_bytes
from dlpipe.wire import ModelConfig


class ExportError(ValueError):
    """The model, labels and recipe do not make a consistent servable version."""


@dataclass(frozen=True)
class ExportedVersion:
    name: str
    version: str
    prefix: str          # the version's folder in the model store
    tflite_bytes: int
    max_abs_diff: float | None   # LiteRT against Keras on a random input, when checked


def to_tflite(model) -> bytes:
    """Convert a Keras model to a float32 LiteRT flatbuffer (TFLite converter, no quantisation)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # Keras prints the intermediate SavedModel's signature to stdout: not the user's business.
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def _check_consistent(model, labels: list[str], recipe: Recipe) -> tuple[tuple[int, int, int], int]:
    shape = tuple(model.input_shape)
    if len(shape) != 4 or None in shape[1:]:
        raise ExportError(f"the model must take one fixed-size image (batch, H, W, C); its input is {shape}")
    height, width, channels = (int(d) for d in shape[1:])
    classes = int(model.output_shape[-1])
    if (height, width, channels) != (recipe.size, recipe.size, recipe.channels):
        raise ExportError(f"the recipe makes {recipe.size}x{recipe.size}x{recipe.channels} inputs but the model "
                          f"takes {height}x{width}x{channels}")
    if len(labels) != classes:
        raise ExportError(f"{len(labels)} labels for a model with {classes} outputs")
    if not all(isinstance(label, str) and label for label in labels):
        raise ExportError("labels must be non-empty strings")
    return (height, width, channels), classes


def export_model(model, store: ObjectStore, name: str, labels: list[str], recipe: Recipe,
                 source: dict | None = None, version: str | None = None, check: bool = True,
                 set_latest: bool = True, config: ModelConfig | None = None) -> ExportedVersion:
    """Write `model` as version `version` (default: the next vN) of `name`, then point latest at it.

    config: the model's ModelConfig; with it the version also stores its Keras weights
    (weights.npz) and config (model.json), so a training run can start from it
    (`orchestrator train --init-from NAME:VERSION`).

    check: run the flatbuffer with LiteRT on a random input and require the same
    probabilities as Keras (to 1e-4), so a conversion problem fails here, not in serving.
    Files are written in an order that keeps readers safe: meta.json (which marks a
    version complete) after the others, the `latest` pointer last.
    """
    validate_name(name, "model name")
    input_shape, classes = _check_consistent(model, labels, recipe)
    version = validate_name(version, "model version") if version else next_version(store, name)
    if store.exists(version_key(name, version, "meta.json")):
        raise ExportError(f"model {name!r} already has a version {version!r}; choose another version")

    tflite = to_tflite(model)
    max_diff = None
    if check:
        x = np.random.default_rng(0).normal(size=input_shape).astype(np.float32)
        expected = np.asarray(model(x[None], training=False))[0]
        max_diff = float(np.max(np.abs(LiteRTNetwork(tflite).run(x) - expected)))  # as serving runs it
        if not max_diff <= 1e-4:
            raise ExportError(f"the converted model disagrees with Keras by {max_diff:.3g} (> 1e-4); not exported")

    meta = {
        "name": name, "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source or {}, "input_shape": list(input_shape), "classes": classes,
        "format": "tflite float32", "output": "probabilities",
        "tflite_sha256": hashlib.sha256(tflite).hexdigest(), "tflite_bytes": len(tflite),
    }
    files: dict[str, bytes] = {}
    if config is not None:
        weights = weights_to_bytes(model.get_weights())
        meta["weights_sha256"] = hashlib.sha256(weights).hexdigest()
        files |= {"weights.npz": weights, "model.json": config.model_dump_json(indent=1).encode()}
    files |= {"model.tflite": tflite, "labels.json": json.dumps(list(labels), indent=0).encode(),
              "recipe.json": json.dumps(recipe.to_dict(), indent=2).encode()}
    write_version(store, name, version, files, meta, make_latest=set_latest)
    return ExportedVersion(name, version, f"{MODELS_PREFIX}/{name}/{version}/", len(tflite), max_diff)

