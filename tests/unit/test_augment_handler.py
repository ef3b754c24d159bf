"""The augment handler, called as Lambda calls it, with the sample event from events/."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import imagefiles as f
import pytest

from dlpipe.shared.store import DirStore
from orchestrator.invokers.local import LocalContext, LocalInvoker

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "functions" / "augment" / "app.py"
EVENT = json.loads((REPO / "events" / "augment.json").read_text())


@pytest.fixture
def handler(tmp_path, monkeypatch):
    """The handler module, loaded fresh, reading a temporary store named by the environment."""
    store = DirStore(tmp_path / "data")
    makers = {".jpg": lambda i: f.jpeg(80, 60, seed=i), ".png": lambda i: f.encode(f.photo(60, 60, seed=i), "PNG")}
    for i, key in enumerate(EVENT["keys"]):
        store.put(key, f.truncated_jpeg() if "broken" in key else makers[Path(key).suffix](i))
    monkeypatch.setenv("DLPIPE_DATA_URL", str(store.root))
    spec = importlib.util.spec_from_file_location("augment_app_under_test", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.store = store
    return module


def context() -> LocalContext:
    return LocalContext("augment", 1024, 300, "test-request")


def test_sample_event_augments_every_valid_key(handler):
    response = handler.handler(json.loads(json.dumps(EVENT)), context())
    json.dumps(response)  # must be a JSON response
    variants = EVENT["spec"]["variants"]
    by_key = {r["key"]: r for r in response["results"]}
    assert list(by_key) == EVENT["keys"]
    assert by_key["raw/dog/broken.jpg"]["error"].startswith("corrupt or truncated")
    assert by_key["raw/cat/cat-2.png"]["outputs"] == [f"augmented/cat/cat-2__{v}.jpg" for v in variants]
    assert response["failed"] == 1
    assert response["images_out"] == (len(EVENT["keys"]) - 1) * len(variants)
    written = sorted(handler.store.list("augmented/"))
    assert written == sorted(k for r in response["results"] for k in r["outputs"])
    assert {k.split("/")[1] for k in written} == {"cat", "dog"}
    assert response["requests"] == {"get": len(EVENT["keys"]), "put": len(written), "list": 0, "head": 0,
                                    "delete": 0}


def test_a_packed_batch_makes_one_put(handler):
    response = handler.handler({**EVENT, "shard": "shard-000000"}, context())
    assert response["failed"] == 1 and [s["key"] for s in response["shards"]] == ["augmented/shard-000000.tar"]
    assert response["requests"] == {"get": len(EVENT["keys"]), "put": 1, "list": 0, "head": 0, "delete": 0}


@pytest.mark.parametrize("event, message", [
    ({"source_prefix": "raw", "output_prefix": "augmented"}, "invalid augment event: keys: Field required"),
    ({**EVENT, "spec": {"variants": ["sepia"]}}, "spec.variants: unknown variant(s) ['sepia']"),
    ({**EVENT, "spec": {"sise": 64}}, "spec.sise: Extra inputs are not permitted"),
    ({**EVENT, "outputs": "elsewhere"}, "outputs: Extra inputs are not permitted"),
    ({**EVENT, "output_prefix": "/tmp/evil"}, "output_prefix: prefix '/tmp/evil' is absolute"),
    ({**EVENT, "output_prefix": "../evil"}, "output_prefix: not a folder inside the store"),
    ({**EVENT, "keys": "raw/cat/cat-1.jpg"}, "keys: Input should be a valid list"),
    (["not", "an", "object"], "invalid augment event: event: Input should be a valid dictionary"),
])
def test_bad_event_is_a_400_naming_the_problem_and_nothing_is_written(handler, event, message):
    response = handler.handler(json.loads(json.dumps(event)), context())
    assert response == {"statusCode": 400, "error": response["error"], "kind": "invalid_event"}
    assert message in response["error"]
    assert "Traceback" not in response["error"] and "https://" not in response["error"]
    assert "input_value" not in response["error"]
    assert sorted(handler.store.list("")) == sorted(EVENT["keys"])     # nothing written, anywhere


def test_function_stays_usable_after_a_bad_event(handler):
    assert handler.handler({**EVENT, "spec": {"sise": 64}}, context())["statusCode"] == 400
    response = handler.handler(EVENT, context())   # the same warm module, next call
    assert response["statusCode"] == 200 and response["images_out"] > 0


def test_bad_event_through_the_local_invoker_is_an_answer_not_a_function_error(tmp_path):
    with LocalInvoker(concurrency=1, env={"DLPIPE_DATA_URL": str(tmp_path / "data")}) as invoker:
        (result,) = invoker.map("augment", [{**EVENT, "spec": {"sise": 64}}])
    assert result.ok and result.error is None
    assert result.payload["statusCode"] == 400 and "spec.sise" in result.payload["error"]
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.jpg"))


def test_handler_never_imports_tensorflow():
    code = (f"import importlib.util, sys; s = importlib.util.spec_from_file_location('app', {str(APP)!r});"
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m);"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
