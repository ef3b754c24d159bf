"""The predict workflow of a warm container: resolve the model, read the image, classify, record.

Failures a caller can act on are ServingErrors with a message that names the caller's
inputs; a store or table that fails is `Unavailable`, whose message says which one and
keeps the underlying error (which may name buckets, paths or tables) as its __cause__ for
the function's log only (see `dlpipe.wire.ServingError`).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from datetime import UTC, datetime

from dlpipe.predict.classifier import Classifier, needed_size
from dlpipe.predict.versions import latest_version, load_version
from dlpipe.shared.images import ImageError, open_image
from dlpipe.shared.store import InvalidKey, KeyNotFound, ObjectStore, StoreError
from dlpipe.shared.table import PredictionRecord, PredictionsTable, TableError
from dlpipe.wire import BadRequest, NotFound, PredictRequest, PredictResponse, Unavailable


def prediction_id(request_id: str, source: str, model: str, version: str, k: int) -> str:
    """Deterministic: a retried request (same request id) maps to the same record."""
    return hashlib.sha256(f"{request_id}|{source}|{model}|{version}|{k}".encode()).hexdigest()[:32]


class Predictor:
    """A predict container's warm state: stores, the table, and loaded classifiers.

    Classifiers are cached by (model name, version), least recently used evicted beyond
    `max_models`. Which version is `latest` is re-read at most every `latest_ttl_s`
    seconds, so a newly exported version is picked up without a cold start.
    """

    def __init__(self, data_store: ObjectStore, model_store: ObjectStore, table: PredictionsTable,
                 num_threads: int = 1, latest_ttl_s: float = 10.0, max_models: int = 4) -> None:
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
        try:
            key = (name, self.resolve(name, version))
            if key in self._classifiers:
                self._classifiers.move_to_end(key)
                return self._classifiers[key], False
            classifier = Classifier(load_version(self.model_store, *key), self.num_threads)
        except StoreError as err:
            raise Unavailable("the model store cannot be read; the function's log has the details") from err
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
            raise NotFound(f"no image at key {request.key!r} in the data store") from None
        except InvalidKey as err:
            raise BadRequest(str(err)) from None
        except StoreError as err:
            raise Unavailable("the data store cannot be read; the function's log has the details") from err

    def _record(self, record: PredictionRecord) -> bool:
        try:
            return self.table.put(record)
        except TableError as err:
            raise Unavailable("the predictions table cannot be written; the function's log has the details") from err

    def predict(self, request: PredictRequest, request_id: str) -> PredictResponse:
        """Classify the request's image, record the prediction, return the response.

        latency_ms covers reading, decoding, preprocessing and inference; loading the model
        on a container's first request for it is reported apart, as model_load_ms.
        """
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
            created=datetime.now(UTC).isoformat(timespec="milliseconds"),
            model=version.name, version=version.version, image_key=request.key, image_sha256=digest,
            image_name=request.name, top=[t.model_dump() for t in top], latency_ms=latency_ms,
            request_id=request.request_id or request_id)
        inserted = self._record(record)
        return PredictResponse(id=record.id, model=version.info(), image=request.label, top=top,
                               latency_ms=latency_ms, model_load_ms=load_ms, duplicate=not inserted)
