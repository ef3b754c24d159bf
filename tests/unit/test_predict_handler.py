"""The predict handler, called as Lambda calls it: good requests answered and recorded, bad ones
answered with a 4xx and recorded nowhere, and the warm function keeps serving after them."""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import imagefiles as f
import pytest
from pydantic import ValidationError

from dlpipe.predict.versions import latest_key, version_key
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import DirStore
from dlpipe.shared.table import SqliteTable
from dlpipe.wire import ErrorResponse, PredictRequest, PredictResponse, parse_reply
from orchestrator.invokers.local import LocalContext, LocalInvoker

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "functions" / "predict" / "app.py"
LABELS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def tflite() -> bytes:
    from dlpipe.publish.export import to_tflite
    from dlpipe.train.model import squeezenet

    return to_tflite(squeezenet("1.1", (32, 32, 3), len(LABELS), small_inputs=True))


@pytest.fixture
def home(tmp_path, tflite, monkeypatch):
    """Stores and table of a fresh embedded deployment with one model version, named by the environment."""
    models, data = DirStore(tmp_path / "models"), DirStore(tmp_path / "data")
    for name, content in {"model.tflite": tflite, "labels.json": json.dumps(LABELS).encode(),
                          "recipe.json": json.dumps(Recipe(size=32).to_dict()).encode(),
                          "meta.json": b"{}"}.items():
        models.put(version_key("tiny", "v1", name), content)
    models.put(latest_key("tiny"), b"v1")
    data.put("photos/cat.jpg", f.jpeg(64, 48))
    data.put("photos/broken.jpg", f.truncated_jpeg())
    env = {"DLPIPE_DATA_URL": str(data.root), "DLPIPE_MODEL_URL": str(models.root),
           "DLPIPE_TABLE_URL": f"sqlite:///{tmp_path}/predictions.sqlite"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def app(home):
    """The handler module, loaded fresh (a cold container)."""
    spec = importlib.util.spec_from_file_location("predict_app_under_test", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    if module._predictor is not None:
        module._predictor.table.close()


def table(home) -> SqliteTable:
    return SqliteTable(home["DLPIPE_TABLE_URL"][len("sqlite:///"):])


def call(app, event: dict) -> dict:
    response = app.handler(json.loads(json.dumps(event)), LocalContext("predict", 1024, 30, "req-1"))
    return json.loads(json.dumps(response))          # what Lambda would send back


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_sample_event_is_a_valid_request():
    event = json.loads((REPO / "events" / "predict.json").read_text())
    assert PredictRequest.model_validate(event).key


def test_key_request_is_answered_and_recorded(app, home):
    response = call(app, {"model": "tiny", "key": "photos/cat.jpg", "top_k": 2})
    assert response["statusCode"] == 200, response
    assert response["model"] == {"name": "tiny", "version": "v1"}
    assert [t["label"] in LABELS for t in response["top"]] == [True, True]
    assert sum(t["probability"] for t in call(app, {"model": "tiny", "key": "photos/cat.jpg", "top_k": 3})["top"]) \
        == pytest.approx(1.0, abs=1e-4)
    stored = table(home).get(response["id"])
    assert stored.image_key == "photos/cat.jpg" and stored.top == response["top"]


def test_replies_count_the_store_requests_of_each_call(app):
    cold = call(app, {"model": "tiny", "key": "photos/cat.jpg"})["requests"]
    warm = call(app, {"model": "tiny", "key": "photos/cat.jpg"})["requests"]
    inline = call(app, {"model": "tiny", "version": "v1", "image_b64": b64(f.jpeg(40, 40, seed=3))})["requests"]
    assert cold["get"] > warm["get"] >= 1 and cold["put"] == warm["put"] == 0    # cold: the model files too
    assert warm["get"] - inline["get"] == 1                                      # the image, by key


def test_inline_request_is_recorded_by_digest(app, home):
    response = call(app, {"model": "tiny", "version": "v1", "image_b64": b64(f.jpeg(40, 40, seed=3)),
                          "name": "mine.jpg"})
    assert response["statusCode"] == 200 and len(response["top"]) == 3
    stored = table(home).get(response["id"])
    assert stored.image_key is None and stored.image_name == "mine.jpg" and len(stored.image_sha256) == 64


@pytest.mark.parametrize("event, status, message", [
    ({"key": "photos/cat.jpg"}, 400, "model: Field required"),
    ({"model": "tiny"}, 400, "exactly one image source"),
    ({"model": "tiny", "key": "photos/cat.jpg", "image_b64": "aGk="}, 400, "exactly one image source"),
    ({"model": "tiny", "key": "photos/cat.jpg", "topk": 3}, 400, "topk: Extra inputs are not permitted"),
    ({"model": "tiny", "key": "photos/cat.jpg", "top_k": "many"}, 400, "top_k"),
    ({"model": "tiny", "image_b64": "%%% not base64 %%%", "name": "x.jpg"}, 400, "not valid base64"),
    ({"model": "tiny", "image_b64": b64(b""), "name": "empty.jpg"}, 400, "empty.jpg: empty file"),
    ({"model": "tiny", "image_b64": b64(f.text_as_jpg()), "name": "notes.jpg"}, 400, "not a recognised image"),
    ({"model": "tiny", "image_b64": b64(f.truncated_jpeg()), "name": "cut.jpg"}, 400, "truncated"),
    ({"model": "tiny", "key": "photos/broken.jpg"}, 400, "photos/broken.jpg: corrupt or truncated"),
    ({"model": "tiny", "image_b64": b64(f.png_bomb(8000, 8000)), "name": "bomb.png"}, 400, "too large"),
    ({"model": "tiny", "key": "photos/nothing.jpg"}, 404, "no image at key 'photos/nothing.jpg'"),
    ({"model": "other", "key": "photos/cat.jpg"}, 404, "unknown model 'other'"),
    ({"model": "tiny", "version": "v3", "key": "photos/cat.jpg"}, 404, "no version 'v3'; versions: v1"),
])
def test_bad_requests_get_a_4xx_naming_the_problem_and_record_nothing(app, home, event, status, message, tmp_path):
    response = call(app, event)
    assert response["statusCode"] == status
    assert message in response["error"]
    assert "top" not in response
    assert str(tmp_path) not in response["error"]          # never where the stores are (see ServingError)
    assert table(home).count() == 0


def test_error_answers_have_one_shape(app):
    invalid = call(app, {"model": "tiny", "key": "photos/cat.jpg", "topk": 3})
    assert invalid == {"statusCode": 400, "kind": "invalid_event",
                       "error": "invalid predict event: topk: Extra inputs are not permitted"}
    assert ErrorResponse.model_validate(call(app, {"model": "other", "key": "photos/cat.jpg"})).kind == "not_found"
    assert call(app, {"model": "tiny", "image_b64": b64(b""), "name": "e.jpg"})["kind"] == "bad_request"


def test_validation_messages_carry_no_input_values_or_links(app):
    secret = "x" * 40
    response = call(app, {"model": "tiny", "key": "photos/cat.jpg", "top_k": secret, "version": {"v": secret}})
    assert response["statusCode"] == 400 and "top_k: Input should be a valid integer" in response["error"]
    assert "version: Input should be a valid string" in response["error"]
    assert secret not in response["error"] and "errors.pydantic.dev" not in response["error"]


def test_wrapped_and_url_safe_base64_are_served(app):
    text = b64(f.jpeg(40, 40, seed=5))
    wrapped = "\n".join(text[i:i + 76] for i in range(0, len(text), 76)) + "\n"
    urlsafe = text.replace("+", "-").replace("/", "_").rstrip("=")
    answers = [call(app, {"model": "tiny", "image_b64": t, "name": "w.jpg"}) for t in (text, wrapped, urlsafe)]
    assert [a["statusCode"] for a in answers] == [200, 200, 200]
    assert answers[1]["top"] == answers[0]["top"] == answers[2]["top"]


def test_an_unusable_table_is_a_503_that_does_not_reveal_its_path(home, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("DLPIPE_TABLE_URL", f"sqlite:///{tmp_path}/a-file/predictions.sqlite")
    spec = importlib.util.spec_from_file_location("predict_app_broken_table", APP)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    response = call(app, {"model": "tiny", "key": "photos/cat.jpg"})
    assert response["statusCode"] == 503 and response["kind"] == "unavailable"
    assert "predictions table" in response["error"] and str(tmp_path) not in response["error"]


def test_threads_and_latest_ttl_come_from_the_environment(app, monkeypatch):
    monkeypatch.setenv("DLPIPE_PREDICT_THREADS", "2")
    monkeypatch.setenv("DLPIPE_LATEST_TTL_S", "0.25")
    assert (app.predictor().num_threads, app.predictor().latest_ttl_s) == (2, 0.25)


def test_not_a_json_object_is_a_400(app):
    assert call(app, ["a", "list"])["statusCode"] == 400


def test_warm_worker_keeps_serving_after_bad_requests(home):
    with LocalInvoker(concurrency=1, env=home) as invoker:
        events = [{"model": "tiny", "key": "photos/cat.jpg"},
                  {"model": "tiny", "image_b64": b64(f.text_as_jpg()), "name": "bad.jpg"},
                  {"model": "nope", "key": "photos/cat.jpg"},
                  {"model": "tiny", "key": "photos/cat.jpg", "request_id": "after-the-bad-ones"}]
        results = sorted(invoker.map("predict", events), key=lambda r: r.index)
    assert all(r.ok for r in results)                   # no function errors, only answers
    assert [r.payload["statusCode"] for r in results] == [200, 400, 404, 200]
    assert [r.extra["cold"] for r in results] == [True, False, False, False]   # one warm worker throughout
    assert results[0].payload["model_load_ms"] > 0 and results[3].payload["model_load_ms"] == 0
    assert table(home).count() == 2


def test_handler_never_imports_tensorflow(home):
    script = f"""
import importlib.util, json, sys
from orchestrator.invokers.local import LocalContext
spec = importlib.util.spec_from_file_location("app", {str(APP)!r})
app = importlib.util.module_from_spec(spec); spec.loader.exec_module(app)
r = app.handler({{"model": "tiny", "key": "photos/cat.jpg"}}, LocalContext("predict", 1024, 30, "r"))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "jax", "torch"))
print(json.dumps({{"status": r["statusCode"], "heavy": heavy}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=None)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"status": 200, "heavy": []}


def test_an_unforeseen_failure_is_a_500_that_points_to_the_log(app, monkeypatch):
    monkeypatch.setenv("DLPIPE_PREDICT_THREADS", "two")          # a misconfigured deployment
    response = call(app, {"model": "tiny", "key": "photos/cat.jpg"})
    assert response == {"statusCode": 500, "kind": "internal",
                        "error": "internal error; the function's log has the details (request id req-1)"}
    monkeypatch.setenv("DLPIPE_PREDICT_THREADS", "1")
    assert call(app, {"model": "tiny", "key": "photos/cat.jpg"})["statusCode"] == 200


def test_the_answer_keeps_the_documented_shape(app):
    response = call(app, {"model": "tiny", "key": "photos/cat.jpg", "top_k": 2})
    assert list(response) == ["statusCode", "id", "model", "image", "top", "latency_ms", "model_load_ms", "duplicate",
                              "requests"]
    assert response["image"] == "photos/cat.jpg" and response["model"] == {"name": "tiny", "version": "v1"}
    assert [list(t) for t in response["top"]] == [["label", "index", "probability"]] * 2
    assert parse_reply(response, PredictResponse).top[0].label == response["top"][0]["label"]


def test_replies_parse_as_their_model_or_as_the_error_a_function_of_any_version_answered():
    older = parse_reply({"statusCode": 404, "error": "unknown model 'x'"}, PredictResponse)   # no kind yet
    assert isinstance(older, ErrorResponse) and (older.error, older.kind) == ("unknown model 'x'", "")
    newer = parse_reply({"statusCode": 400, "error": "e", "kind": "something_new", "hint": "h"}, PredictResponse)
    assert isinstance(newer, ErrorResponse) and newer.kind == "something_new"
    for garbage in ({"statusCode": 200}, {"statusCode": 500}, ["a"], None):
        with pytest.raises(ValidationError):
            parse_reply(garbage, PredictResponse)
