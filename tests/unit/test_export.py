"""Export: a Keras model to a servable version (LiteRT flatbuffer, labels, recipe, meta, latest)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dlpipe.predict.classifier import Classifier
from dlpipe.predict.versions import latest_version, list_models, load_version, next_version, set_latest
from dlpipe.publish.export import ExportError, export_model
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import DirStore
from dlpipe.wire import NotFound

LABELS = ["t-shirt", "trouser", "pullover", "dress"]
RECIPE = Recipe(size=32, channels=1, scale=1 / 255, mean=(0.5,), std=(0.5,))


@pytest.fixture(scope="module")
def model():
    from dlpipe.train.model import squeezenet

    return squeezenet("1.1", (32, 32, 1), len(LABELS), small_inputs=True)


class RecordingStore(DirStore):
    """A directory store that remembers the order of writes."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.puts: list[str] = []

    def put(self, key: str, data: bytes) -> None:
        self.puts.append(key)
        super().put(key, data)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    store = RecordingStore(tmp_path_factory.mktemp("models"))
    result = export_model(model, store, "fmnist", LABELS, RECIPE, source={"kind": "run", "run": "r1", "round": 3})
    return store, result


def test_export_writes_a_complete_version_then_latest(exported):
    store, result = exported
    assert (result.name, result.version, result.prefix) == ("fmnist", "v1", "models/fmnist/v1/")
    assert store.puts == ["models/fmnist/v1/model.tflite", "models/fmnist/v1/labels.json",
                          "models/fmnist/v1/recipe.json", "models/fmnist/v1/meta.json", "models/fmnist/latest"]
    assert json.loads(store.get("models/fmnist/v1/labels.json")) == LABELS
    assert Recipe.from_dict(json.loads(store.get("models/fmnist/v1/recipe.json"))) == RECIPE
    meta = json.loads(store.get("models/fmnist/v1/meta.json"))
    assert meta["input_shape"] == [32, 32, 1] and meta["classes"] == 4
    assert meta["source"] == {"kind": "run", "run": "r1", "round": 3}
    assert meta["tflite_bytes"] == result.tflite_bytes == len(store.get("models/fmnist/v1/model.tflite"))
    assert latest_version(store, "fmnist") == "v1"


def test_exported_flatbuffer_reproduces_keras(exported, model):
    store, result = exported
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    classifier = Classifier(load_version(store, "fmnist"))
    x = np.random.default_rng(1).uniform(-1, 1, size=(32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(classifier.probabilities(x), np.asarray(model(x[None]))[0], atol=1e-5)


def test_versions_count_up_and_are_never_overwritten(model, tmp_path):
    store = DirStore(tmp_path)
    assert next_version(store, "fmnist") == "v1"
    export_model(model, store, "fmnist", LABELS, RECIPE, check=False)
    assert next_version(store, "fmnist") == "v2"
    export_model(model, store, "fmnist", LABELS, RECIPE, version="best", check=False, set_latest=False)
    assert list_models(store) == {"fmnist": ["v1", "best"]}
    assert latest_version(store, "fmnist") == "v1"                 # set_latest=False left it alone
    with pytest.raises(ExportError, match="already has a version 'v1'"):
        export_model(model, store, "fmnist", LABELS, RECIPE, version="v1", check=False)
    set_latest(store, "fmnist", "best")
    assert latest_version(store, "fmnist") == "best"
    with pytest.raises(NotFound, match="no complete version 'v9'"):
        set_latest(store, "fmnist", "v9")


@pytest.mark.parametrize("labels, recipe, message", [
    (LABELS[:3], RECIPE, "3 labels for a model with 4 outputs"),
    (LABELS, Recipe(size=64, channels=1), "recipe makes 64x64x1 inputs but the model takes 32x32x1"),
    (LABELS, Recipe(size=32, channels=3), "32x32x3"),
    (["a", "", "c", "d"], RECIPE, "non-empty"),
])
def test_inconsistent_exports_are_refused_before_writing(model, tmp_path, labels, recipe, message):
    store = DirStore(tmp_path)
    with pytest.raises(ExportError, match=message):
        export_model(model, store, "fmnist", labels, recipe)
    assert list(store.list()) == []


def test_bad_names_are_refused(model, tmp_path):
    with pytest.raises(ValueError, match="invalid model name"):
        export_model(model, DirStore(tmp_path), "../escape", LABELS, RECIPE)
