"""Serving core: the predict request, model versions in the store, the LiteRT classifier, the predictor."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from dlpipe.predict.classifier import Classifier, top_k
from dlpipe.predict.predictor import Predictor, prediction_id
from dlpipe.predict.versions import (
    latest_key,
    latest_version,
    list_models,
    load_version,
    read_meta,
    version_key,
    version_sort_key,
)
from dlpipe.shared.config import ServingSettings
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import DirStore
from dlpipe.shared.table import SqliteTable, TableError
from dlpipe.wire import BadRequest, ModelError, NotFound, PredictRequest, Unavailable

LABELS = ["red", "green", "blue"]
RECIPE = Recipe(size=32)


@pytest.fixture(scope="module")
def keras_model():
    from dlpipe.train.model import squeezenet

    return squeezenet("1.1", (32, 32, 3), len(LABELS), small_inputs=True)


@pytest.fixture(scope="module")
def tflite(keras_model) -> bytes:
    from dlpipe.publish.export import to_tflite

    return to_tflite(keras_model)


def put_version(store, version: str, tflite: bytes, name: str = "tiny") -> None:
    """Write a version in the documented layout (dlpipe.publish.export does the same; converting once is faster)."""
    store.put(version_key(name, version, "model.tflite"), tflite)
    store.put(version_key(name, version, "labels.json"), json.dumps(LABELS).encode())
    store.put(version_key(name, version, "recipe.json"), json.dumps(RECIPE.to_dict()).encode())
    store.put(version_key(name, version, "meta.json"), json.dumps({"classes": len(LABELS)}).encode())
    store.put(latest_key(name), version.encode())


@pytest.fixture
def model_store(tmp_path, tflite):
    store = DirStore(tmp_path / "models")
    put_version(store, "v1", tflite)
    return store


def png(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


# --- the request ----------------------------------------------------------------------

def test_request_needs_exactly_one_image_source():
    assert PredictRequest(model="m", key="a/b.jpg").top_k == 5
    assert PredictRequest(model="m", image_b64="aGk=").version is None
    for fields in ({"model": "m"}, {"model": "m", "key": "a.jpg", "image_b64": "aGk="}):
        with pytest.raises(ValueError, match="exactly one image source"):
            PredictRequest(**fields)


@pytest.mark.parametrize("fields, problem", [
    ({"model": "m", "key": "../etc/passwd"}, "segment"),
    ({"model": "../m", "key": "a.jpg"}, "model"),
    ({"model": "m", "key": "a.jpg", "top_k": 0}, "top_k"),
    ({"model": "m", "key": "a.jpg", "top_k": 101}, "top_k"),
    ({"model": "m", "key": "a.jpg", "colour": "red"}, "colour"),
])
def test_request_rejects_bad_fields(fields, problem):
    with pytest.raises(ValueError, match=problem):
        PredictRequest(**fields)


def test_inline_image_must_fit_a_lambda_request():
    with pytest.raises(ValueError, match="more than a Lambda request can carry"):
        PredictRequest(model="m", image_b64="A" * (6 * 1024 * 1024))


def test_inline_image_must_be_base64():
    assert PredictRequest(model="m", image_b64=base64.b64encode(b"abc").decode()).image_bytes() == b"abc"
    with pytest.raises(BadRequest, match="not valid base64"):
        PredictRequest(model="m", image_b64="not base64!", name="x.jpg").image_bytes()


# --- top-k and versions ------------------------------------------------------------------

def test_top_k_orders_by_probability_and_clips_k():
    top = top_k(np.array([0.1, 0.6, 0.3]), LABELS, 2)
    assert [(t.label, t.index) for t in top] == [("green", 1), ("blue", 2)]
    assert top[0].probability == pytest.approx(0.6)
    assert len(top_k(np.array([0.2, 0.5, 0.3]), LABELS, 10)) == 3
    tied = top_k(np.array([0.25, 0.5, 0.25]), LABELS, 3)
    assert [t.index for t in tied] == [1, 0, 2]          # ties keep class order


def test_version_sort_is_numeric():
    assert sorted(["v10", "v2", "best", "v1"], key=version_sort_key) == ["v1", "v2", "v10", "best"]


def test_versions_latest_and_errors_name_what_exists(model_store, tflite):
    assert list_models(model_store) == {"tiny": ["v1"]}
    assert latest_version(model_store, "tiny") == "v1"
    put_version(model_store, "v2", tflite)
    assert list_models(model_store) == {"tiny": ["v1", "v2"]}
    assert latest_version(model_store, "tiny") == "v2"
    assert read_meta(model_store, "tiny", "v1")["classes"] == 3
    with pytest.raises(NotFound, match="known models: tiny"):
        latest_version(model_store, "other")
    with pytest.raises(NotFound, match="versions: v1, v2"):
        read_meta(model_store, "tiny", "v9")


def test_empty_store_says_how_to_get_a_model(tmp_path):
    with pytest.raises(NotFound, match="import-onnx"):
        latest_version(DirStore(tmp_path / "empty"), "anything")


def test_incomplete_version_is_a_model_error(model_store):
    model_store.delete(version_key("tiny", "v1", "labels.json"))
    with pytest.raises(ModelError, match="incomplete"):
        load_version(model_store, "tiny")


# --- the classifier -------------------------------------------------------------------------

def test_classifier_matches_keras_on_a_preprocessed_image(model_store, keras_model):
    image = Image.open(io.BytesIO(png((10, 200, 90), (50, 37))))
    x = RECIPE.apply(image)
    classifier = Classifier(load_version(model_store, "tiny"), num_threads=1)
    assert classifier.input_shape == (32, 32, 3) and classifier.classes == 3
    expected = np.asarray(keras_model(x[None], training=False))[0]
    np.testing.assert_allclose(classifier.probabilities(x), expected, atol=1e-5)
    top = classifier.classify(image, k=2)
    assert [t.index for t in top] == list(np.argsort(-expected)[:2])


def test_classifier_refuses_inconsistent_versions(model_store):
    version = load_version(model_store, "tiny")
    version.labels = ["only", "two"]
    with pytest.raises(ModelError, match="2 labels for 3 outputs"):
        Classifier(version)
    version = load_version(model_store, "tiny")
    version.recipe = Recipe(size=64)
    with pytest.raises(ModelError, match="recipe makes"):
        Classifier(version)
    version = load_version(model_store, "tiny")
    version.tflite = b"definitely not a flatbuffer" * 10
    with pytest.raises(ModelError, match="LiteRT cannot load"):
        Classifier(version)


# --- the predictor ----------------------------------------------------------------------------

@pytest.fixture
def predictor(tmp_path, model_store):
    data = DirStore(tmp_path / "data")
    data.put("imgs/red.png", png())
    table = SqliteTable(tmp_path / "predictions.sqlite")
    yield Predictor(data, model_store, table)
    table.close()


def test_predict_records_the_prediction(predictor):
    body = predictor.predict(PredictRequest(model="tiny", key="imgs/red.png", top_k=2), "req-1").model_dump()
    assert body["statusCode"] == 200 and body["model"] == {"name": "tiny", "version": "v1"}
    assert len(body["top"]) == 2 and body["top"][0]["probability"] >= body["top"][1]["probability"]
    assert body["latency_ms"] > 0 and body["model_load_ms"] > 0 and body["duplicate"] is False
    record = predictor.table.get(body["id"])
    assert record.image_key == "imgs/red.png" and record.top == body["top"]
    assert record.model == "tiny" and record.version == "v1" and record.request_id == "req-1"
    assert len(record.image_sha256) == 64


def test_classifier_is_loaded_once_and_reused(predictor):
    first, loaded = predictor.classifier("tiny")
    again, loaded_again = predictor.classifier("tiny", "v1")
    assert loaded and not loaded_again and again is first
    body = predictor.predict(PredictRequest(model="tiny", key="imgs/red.png"), "req-2")
    assert body.model_load_ms == 0


def test_retried_request_is_recorded_once(predictor):
    request = PredictRequest(model="tiny", image_b64=base64.b64encode(png()).decode(), request_id="client-7")
    first = predictor.predict(request, "lambda-request-a")
    retry = predictor.predict(request, "lambda-request-b")     # a retry gets a new Lambda request id
    assert first.id == retry.id and retry.duplicate is True
    assert predictor.table.count() == 1
    other = predictor.predict(PredictRequest(model="tiny", image_b64=request.image_b64), "lambda-request-c")
    assert other.id != first.id and predictor.table.count() == 2


def test_latest_is_reread_after_its_ttl(predictor, tflite):
    predictor.latest_ttl_s = 3600
    assert predictor.classifier("tiny")[0].version.version == "v1"
    put_version(predictor.model_store, "v2", tflite)
    assert predictor.classifier("tiny")[0].version.version == "v1"     # still cached
    predictor.latest_ttl_s = 0
    assert predictor.classifier("tiny")[0].version.version == "v2"


def test_least_recently_used_models_are_evicted(predictor, tflite):
    put_version(predictor.model_store, "v2", tflite)
    predictor.max_models = 1
    predictor.classifier("tiny", "v1")
    predictor.classifier("tiny", "v2")
    assert list(predictor._classifiers) == [("tiny", "v2")]


@pytest.mark.parametrize("request_fields, error, message", [
    ({"key": "imgs/missing.png"}, NotFound, "no image at key 'imgs/missing.png'"),
    ({"image_b64": base64.b64encode(b"").decode(), "name": "empty.jpg"}, BadRequest, "empty.jpg: empty"),
    ({"image_b64": base64.b64encode(b"GIF89a-garbage").decode(), "name": "g.gif"}, BadRequest, "g.gif"),
    ({"image_b64": base64.b64encode(png()[:60]).decode(), "name": "cut.png"}, BadRequest, "cut.png"),
    ({"key": "imgs/red.png", "version": "v7"}, NotFound, "no version 'v7'"),
])
def test_bad_requests_raise_and_record_nothing(predictor, request_fields, error, message):
    with pytest.raises(error, match=message):
        predictor.predict(PredictRequest(model="tiny", **request_fields), "req")
    assert predictor.table.count() == 0


def test_prediction_id_is_deterministic():
    assert prediction_id("r", "key:a", "m", "v1", 5) == prediction_id("r", "key:a", "m", "v1", 5)
    assert prediction_id("r", "key:a", "m", "v1", 5) != prediction_id("r", "key:a", "m", "v2", 5)


def test_latest_pointer_is_plain_text_and_may_end_with_a_newline(model_store):
    model_store.put(latest_key("tiny"), b"v1\n")        # written by hand, as an operator might
    assert latest_version(model_store, "tiny") == "v1"
    model_store.put(latest_key("tiny"), b"../v1")
    with pytest.raises(ModelError, match="latest pointer names no version"):
        latest_version(model_store, "tiny")


# --- what the base64 tools write ---------------------------------------------------------

def test_inline_image_may_be_wrapped_unpadded_or_url_safe():
    data = png() + bytes(range(256))               # long enough to wrap, with bytes that need '+' and '/'
    plain = base64.b64encode(data).decode()
    assert "+" in plain and "/" in plain
    wrapped = "\n".join(plain[i:i + 76] for i in range(0, len(plain), 76)) + "\n"   # what `base64` prints
    urlsafe = base64.urlsafe_b64encode(data).decode()
    for text in (wrapped, wrapped.replace("\n", "\r\n"), urlsafe, urlsafe.rstrip("=")):
        assert PredictRequest(model="m", image_b64=text).image_bytes() == data


@pytest.mark.parametrize("garbage", ["not base64!", "%%% not base64 %%%", "ab+c-d==", "abcde", "a=bc"])
def test_inline_garbage_is_still_refused(garbage):
    with pytest.raises(BadRequest, match="not valid base64"):
        PredictRequest(model="m", image_b64=garbage).image_bytes()


# --- what errors may reveal -------------------------------------------------------------------

def test_errors_name_models_and_keys_but_never_where_the_stores_are(predictor, tmp_path):
    model_store = predictor.model_store
    model_store.delete(version_key("tiny", "v1", "labels.json"))
    for call in (lambda: latest_version(model_store, "other"), lambda: read_meta(model_store, "other", "v1"),
                 lambda: load_version(model_store, "tiny"),
                 lambda: predictor.predict(PredictRequest(model="tiny", key="imgs/missing.png"), "r")):
        with pytest.raises((NotFound, ModelError)) as caught:
            call()
        assert str(tmp_path) not in str(caught.value) and "/models" not in str(caught.value)
    with pytest.raises(ModelError, match=r"incomplete: it has no labels.json"):
        load_version(model_store, "tiny")


def test_a_table_folder_that_cannot_be_created_is_a_table_error(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    table = SqliteTable(tmp_path / "a-file" / "sub" / "predictions.sqlite")
    with pytest.raises(TableError, match="cannot open the predictions table"):
        table.count()


def test_a_broken_table_is_unavailable_and_the_answer_keeps_its_path_to_the_log(tmp_path, model_store):
    (tmp_path / "a-file").write_text("not a folder")
    data = DirStore(tmp_path / "data")
    data.put("imgs/red.png", png())
    predictor = Predictor(data, model_store, SqliteTable(tmp_path / "a-file" / "predictions.sqlite"))
    with pytest.raises(Unavailable, match="predictions table cannot be written") as caught:
        predictor.predict(PredictRequest(model="tiny", key="imgs/red.png"), "r")
    assert caught.value.status == 503 and str(tmp_path) not in str(caught.value)
    assert isinstance(caught.value.__cause__, TableError)      # the detail, for the function's log


# --- the container's settings ------------------------------------------------------------------

def test_serving_settings_come_from_the_environment():
    assert ServingSettings.from_env({}) == ServingSettings(predict_threads=1, latest_ttl_s=10.0)
    assert ServingSettings.from_env({"DLPIPE_PREDICT_THREADS": "2", "DLPIPE_LATEST_TTL_S": "0.5"}) == \
        ServingSettings(predict_threads=2, latest_ttl_s=0.5)
    for env in ({"DLPIPE_PREDICT_THREADS": "two"}, {"DLPIPE_PREDICT_THREADS": "0"}, {"DLPIPE_LATEST_TTL_S": "-1"}):
        with pytest.raises(ValueError, match=next(iter(env))):
            ServingSettings.from_env(env)
