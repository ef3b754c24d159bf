"""Two exports at once make two versions, or one version and one clean refusal: none is lost."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dlpipe.predict.versions import list_models
from dlpipe.publish import export
from dlpipe.publish.export import ExportError, export_model
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import DirStore

LABELS = ["a", "b", "c"]
RECIPE = Recipe(size=32, channels=1)


@pytest.fixture(scope="module")
def model():
    from dlpipe.train.model import squeezenet

    return squeezenet("1.1", (32, 32, 1), len(LABELS), small_inputs=True)


@pytest.fixture
def in_step(model, monkeypatch):
    """Both exports have chosen their version before either writes a file (the race, made certain)."""
    flatbuffer = export.to_tflite(model)
    barrier = threading.Barrier(2, timeout=60)

    def converted(_model) -> bytes:
        barrier.wait()
        return flatbuffer

    monkeypatch.setattr(export, "to_tflite", converted)


def _both(store, model, versions):
    def one(i: int):
        try:
            return export_model(model, store, "m", LABELS, RECIPE, source={"export": i}, version=versions[i],
                                check=False)
        except ExportError as err:
            return err

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, range(2)))


def test_two_exports_at_once_make_two_versions(tmp_path, model, in_step):
    store = DirStore(tmp_path / "models")
    first, second = _both(store, model, [None, None])
    assert {first.version, second.version} == {"v1", "v2"}
    assert list_models(store) == {"m": ["v1", "v2"]}
    sources = {v: json.loads(store.get(f"models/m/{v}/meta.json"))["source"]["export"] for v in ("v1", "v2")}
    assert sorted(sources.values()) == [0, 1]        # each version holds its own export's files


def test_two_exports_of_one_named_version_give_one_version_and_one_clean_refusal(tmp_path, model, monkeypatch):
    store = DirStore(tmp_path / "models")
    flatbuffer = export.to_tflite(model)
    monkeypatch.setattr(export, "to_tflite", lambda _model: flatbuffer)
    results = _both(store, model, ["r1", "r1"])
    refused = [r for r in results if isinstance(r, ExportError)]
    assert len(refused) == 1 and "already has a version 'r1'" in str(refused[0])
    assert list_models(store) == {"m": ["r1"]}


def test_a_failed_export_frees_its_version_number(tmp_path, model, monkeypatch):
    store = DirStore(tmp_path / "models")

    def broken(_model):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(export, "to_tflite", broken)
    with pytest.raises(RuntimeError):
        export_model(model, store, "m", LABELS, RECIPE, check=False)
    assert export.next_version(store, "m") == "v1" and not list(store.list("models/m/"))
