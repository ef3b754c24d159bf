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
from orchestrator.invokers.local import LocalContext

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


def test_bad_event_fails_the_call_clearly_and_the_function_stays_usable(handler):
    with pytest.raises(Exception, match="keys"):
        handler.handler({"source_prefix": "raw", "output_prefix": "augmented"}, context())
    with pytest.raises(Exception, match="unknown variant"):
        handler.handler({**EVENT, "spec": {"variants": ["sepia"]}}, context())
    response = handler.handler(EVENT, context())   # the same warm module, next call
    assert response["images_out"] > 0


def test_handler_never_imports_tensorflow():
    code = (f"import importlib.util, sys; s = importlib.util.spec_from_file_location('app', {str(APP)!r});"
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m);"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
