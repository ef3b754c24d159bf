"""Serving: model versions in the model store, a LiteRT classifier, and the predict request.

This module runs inside the predict zip function, so it must never import TensorFlow or
Keras: models are served with LiteRT (`ai_edge_litert`), whose interpreter starts in a
fraction of a second and runs SqueezeNet several times faster than Keras on one core.

A servable model version is a directory of the model store written by `dlpipe.publish.export`:

    models/<name>/<version>/model.tflite    the float32 network, image in, probabilities out
    models/<name>/<version>/labels.json     class names in output order
    models/<name>/<version>/recipe.json     the preprocessing recipe (dlpipe.shared.recipe.Recipe)
    models/<name>/<version>/meta.json       source, creation time, input shape, classes (written last)
    models/<name>/latest                    the version served by default (written after the version)
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from dlpipe.shared.names import validate_name
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import InvalidKey, KeyNotFound, ObjectStore, join_key

MODELS_PREFIX = "models"
LATEST = "latest"
MODEL_FILES = ("model.tflite", "labels.json", "recipe.json", "meta.json")
# Lambda refuses synchronous request payloads over 6 MB; the base64 text has to fit in that.


from dlpipe.wire import BadRequest, ModelError, NotFound, PredictRequest  # noqa: E402

# --- model versions in the store -------------------------------------------------------

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
        raise NotFound(f"unknown model {name!r} in {store.url}; "
                       + (f"known models: {', '.join(known)}" if known else
                          "no models yet: run `orchestrator export` or `orchestrator import-onnx`")) from None
    return validate_name(version, "model version")


def read_meta(store: ObjectStore, name: str, version: str) -> dict:
    try:
        return json.loads(store.get(version_key(name, version, "meta.json")))
    except KeyNotFound:
        versions = list_models(store).get(name)
        if versions is None:
            raise NotFound(f"unknown model {name!r} in {store.url}") from None
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

    def info(self) -> dict:
        return {"name": self.name, "version": self.version}


def load_version(store: ObjectStore, name: str, version: str | None = None) -> ModelVersion:
    """Read a model version (default: latest) from the model store."""
    version = version or latest_version(store, name)
    meta = read_meta(store, name, version)
    try:
        tflite = store.get(version_key(name, version, "model.tflite"))
        labels = json.loads(store.get(version_key(name, version, "labels.json")))
        recipe = Recipe.from_dict(json.loads(store.get(version_key(name, version, "recipe.json"))))
    except KeyNotFound as err:
        raise ModelError(f"model {name!r} version {version!r} is incomplete: {err}") from None
    except (ValueError, TypeError) as err:
        raise ModelError(f"model {name!r} version {version!r} has an unreadable labels or recipe file: {err}") from None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ModelError(f"model {name!r} version {version!r}: labels.json must be a list of strings")
    return ModelVersion(name, version, tflite, labels, recipe, meta)


# --- the classifier ----------------------------------------------------------------------

def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[dict]:
    """The k most probable classes, most probable first (ties: lower index first)."""
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    k = max(1, min(int(k), probabilities.size))
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": labels[i] if i < len(labels) else str(i), "index": int(i),
             "probability": round(float(probabilities[i]), 6)} for i in order]


class Classifier:
    """A LiteRT interpreter for one model version: image in, class probabilities out.

    Built once per warm container and reused; an interpreter is not safe to share between
    threads, so calls are serialised by a lock (Lambda sends one request at a time anyway).
    """

    def __init__(self, version: ModelVersion, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.version = version
        try:
            self._interpreter = Interpreter(model_content=version.tflite, num_threads=max(1, num_threads))
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"model {version.name!r} version {version.version!r}: LiteRT cannot load "
                             f"model.tflite: {err}") from None
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"][1:])
        self.classes = int(self._output["shape"][-1])
        recipe = version.recipe
        if self.input_shape != (recipe.size, recipe.size, recipe.channels):
            raise ModelError(f"model {version.name!r} version {version.version!r}: the network takes "
                             f"{self.input_shape} but the recipe makes {(recipe.size, recipe.size, recipe.channels)}")
        if len(version.labels) != self.classes:
            raise ModelError(f"model {version.name!r} version {version.version!r}: {len(version.labels)} labels "
                             f"for {self.classes} outputs")
        self._lock = threading.Lock()

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for one preprocessed H x W x C float32 input."""
        batch = np.ascontiguousarray(x, dtype=np.float32)[None]
        with self._lock:
            self._interpreter.set_tensor(self._input["index"], batch)
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output["index"])[0].copy()

    def classify(self, image, k: int = 5) -> list[dict]:
        """Top-k of a PIL image, preprocessed with the version's recipe."""
        return top_k(self.probabilities(self.version.recipe.apply(image)), self.version.labels, k)


def needed_size(recipe: Recipe) -> int:
    """The shorter side an image needs before the recipe resizes it: what decoding may scale down to."""
    if recipe.resize == "center_crop":
        return recipe.resize_shorter or recipe.size
    return recipe.size


# --- the predict workflow of a warm container --------------------------------------------

def prediction_id(request_id: str, source: str, model: str, version: str, k: int) -> str:
    """Deterministic: a retried request (same request id) maps to the same record."""
    return hashlib.sha256(f"{request_id}|{source}|{model}|{version}|{k}".encode()).hexdigest()[:32]


class Predictor:
    """A predict container's warm state: stores, the table, and loaded classifiers.

    Classifiers are cached by (model name, version), least recently used evicted beyond
    `max_models`. Which version is `latest` is re-read at most every `latest_ttl_s`
    seconds, so a newly exported version is picked up without a cold start.
    """

    def __init__(self, data_store: ObjectStore, model_store: ObjectStore, table, num_threads: int = 1,
                 latest_ttl_s: float = 10.0, max_models: int = 4) -> None:
        self.data_store = data_store
        self.model_store = model_store
        self.table = table
        self.num_threads = num_threads
        self.latest_ttl_s = latest_ttl_s
        self.max_models = max(1, max_models)
        self._classifiers: OrderedDict[tuple[str, str], Classifier] = OrderedDict()
        self._latest: dict[str, tuple[str, float]] = {}

    def resolve(self, name: str, version: str | None) -> str:
        if version:
            return version
        cached = self._latest.get(name)
        now = time.monotonic()
        if cached and now - cached[1] < self.latest_ttl_s:
            return cached[0]
        resolved = latest_version(self.model_store, name)
        self._latest[name] = (resolved, now)
        return resolved

    def classifier(self, name: str, version: str | None = None) -> tuple[Classifier, bool]:
        """(classifier, whether it was loaded by this call)."""
        key = (name, self.resolve(name, version))
        if key in self._classifiers:
            self._classifiers.move_to_end(key)
            return self._classifiers[key], False
        classifier = Classifier(load_version(self.model_store, *key), self.num_threads)
        self._classifiers[key] = classifier
        while len(self._classifiers) > self.max_models:
            self._classifiers.popitem(last=False)
        return classifier, True

    def _image_bytes(self, request: PredictRequest) -> bytes:
        if request.key is None:
            return request.image_bytes()
        try:
            return self.data_store.get(request.key)
        except KeyNotFound:
            raise NotFound(f"no image at key {request.key!r} in the data store {self.data_store.url}") from None
        except InvalidKey as err:
            raise BadRequest(str(err)) from None

    def predict(self, request: PredictRequest, request_id: str) -> dict:
        """Classify the request's image, record the prediction, return the response body.

        latency_ms covers reading, decoding, preprocessing and inference; loading the model
        on a container's first request for it is reported apart, as model_load_ms.
        """
        from dlpipe.shared.images import ImageError, open_image
        from dlpipe.shared.table import PredictionRecord

        start = time.perf_counter()
        classifier, loaded = self.classifier(request.model, request.version)
        load_ms = round((time.perf_counter() - start) * 1000, 3) if loaded else 0.0
        start = time.perf_counter()
        data = self._image_bytes(request)
        try:
            # JPEGs decode at a reduced scale when the model needs far fewer pixels than the photo has.
            image = open_image(data, min_size=needed_size(classifier.version.recipe))
        except ImageError as err:
            raise BadRequest(f"{request.label}: {err}") from None
        top = classifier.classify(image, request.top_k)
        latency_ms = round((time.perf_counter() - start) * 1000, 3)

        digest = hashlib.sha256(data).hexdigest()
        source = f"key:{request.key}" if request.key is not None else f"sha256:{digest}"
        version = classifier.version
        record = PredictionRecord(
            id=prediction_id(request.request_id or request_id, source, version.name, version.version, request.top_k),
            created=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            model=version.name, version=version.version, image_key=request.key, image_sha256=digest,
            image_name=request.name, top=top, latency_ms=latency_ms, request_id=request.request_id or request_id)
        inserted = self.table.put(record)
        return {"statusCode": 200, "id": record.id, "model": version.info(), "image": request.label,
                "top": top, "latency_ms": latency_ms, "model_load_ms": load_ms, "duplicate": not inserted}


def error_response(status: int, message: str, **extra: Any) -> dict:
    return {"statusCode": status, "error": message, **extra}
