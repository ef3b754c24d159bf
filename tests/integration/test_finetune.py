"""Fine-tuning the pretrained ImageNet SqueezeNet 1.1 on photos, end to end, on a small flowers12 subset.

import-onnx -> prepare with the model's recipe -> train --init-from (2 workers, classifier only)
-> export -> predict: the real handlers on the local invoker. Needs ../shared (skips without it).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from dlpipe.runs.run import TrainingRun
from dlpipe.shared.config import Settings
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import DirStore
from dlpipe.train.weights import load_weights
from orchestrator.cli import main
from orchestrator.session import Session
from orchestrator.training.loop import TrainingFailed, TrainOptions, run_training
from orchestrator.training.prepare import prepare_dataset

SHARED = Path(__file__).resolve().parents[3] / "shared"
PHOTOS = SHARED / "photos" / "flowers12"
CLASSES = ["daisy", "dandelion", "sunflower", "tigerlily"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if not (PHOTOS.is_dir() and (SHARED / "models" / "squeezenet1.1.onnx").is_file()):
        pytest.skip(f"{SHARED} (flowers12 photos and the pretrained ONNX) is absent: it lives beside the repo")
    from dlpipe.publish.onnx_import import import_onnx, read_labels

    home = tmp_path_factory.mktemp("finetune")
    settings = Settings(str(home / "data"), str(home / "models"), f"sqlite:///{home}/predictions.sqlite")
    labels = read_labels((SHARED / "models" / "imagenet_synset_words.txt").read_text())
    import_onnx(SHARED / "models" / "squeezenet1.1.onnx", labels, settings.model_store(), "squeezenet1.1")
    data = DirStore(home / "data")
    for split, count in (("train", 20), ("test", 6)):
        for name in CLASSES:
            for path in sorted((PHOTOS / split / name).glob("*.jpg"))[:count]:
                data.put(f"flowers/{split}/{name}/{path.name}", path.read_bytes())
    session = Session(settings, "local", concurrency=2)
    recipe = Recipe.from_dict(json.loads(settings.model_store().get("models/squeezenet1.1/v1/recipe.json")))
    prepare_dataset(session, "flowers/train", "fl", 2, recipe, val_source="flowers/test", progress=False)
    prepare_dataset(session, "flowers/train", "small", 2, Recipe(size=64), val_source="flowers/test", progress=False)
    yield {"home": home, "session": session, "models": settings.model_store(), "settings": settings}
    session.close()


def train(world, run: str, rounds: int, **options):
    opts = TrainOptions(dataset=options.pop("dataset", "fl"), run=run, rounds=rounds, output_dir=None, **options)
    return run_training(world["session"], opts, out=io.StringIO(), progress=False)


def test_fine_tuned_classifier_learns_fast_and_frozen_layers_stay_bit_identical(world):
    result = train(world, "ft", 2, init_from="squeezenet1.1", batch_size=8)   # 5 steps a round on 40 photos each
    val = [r.val.accuracy for r in result.records[1:]]
    assert val[-1] > 0.6, val            # 4 classes: chance is 25%
    run, models = TrainingRun(world["models"], "ft"), world["models"]
    config = run.config()
    assert config.training.trainable == "classifier" and config.training.local_epochs == 1
    assert config.init_from.model == "squeezenet1.1" and config.init_from.version == "v1"
    assert not config.init_from.kept_classifier and len(config.init_from.weights_sha256) == 64
    assert config.model.labels == CLASSES and config.model.input_shape == (224, 224, 3)
    pretrained = load_weights(models, "models/squeezenet1.1/v1/weights.npz")
    for r in range(3):
        weights = load_weights(models, run.global_key(r))
        for i, (a, b) in enumerate(zip(weights[:-2], pretrained[:-2], strict=False)):
            assert a.tobytes() == b.tobytes(), f"round {r}: frozen array {i} changed"
        assert weights[-2].shape == (1, 1, 512, 4) and weights[-1].shape == (4,)   # a new classifier
    assert not np.array_equal(load_weights(models, run.global_key(2))[-2], load_weights(models, run.global_key(0))[-2])


def test_resume_is_bit_identical_and_the_same_classes_keep_the_classifier(world, capsys):
    train(world, "straight", 2, init_from="squeezenet1.1", workers=2)
    train(world, "bumpy", 1, init_from="squeezenet1.1", workers=2)
    train(world, "bumpy", 2, resume=True)
    models = world["models"]
    for r in range(3):
        key = TrainingRun(None, "straight").global_key(r)
        assert models.get(key) == models.get(key.replace("straight", "bumpy"))

    where = ["--home", str(world["home"] / "cli"), "--data", world["settings"].data_url,
             "--models", world["settings"].model_url, "--table", world["settings"].table_url]
    assert main([*where, "export", "--run", "straight", "--name", "flowers"]) == 0
    meta = json.loads(models.get("models/flowers/v1/meta.json"))
    assert meta["source"]["init_from"]["model"] == "squeezenet1.1" and meta["source"]["trainable"] == "classifier"
    # The same classes: continue training the exported classifier rather than replacing it.
    train(world, "again", 1, init_from="flowers:v1", trainable="all", learning_rate=1e-5)
    again = TrainingRun(models, "again")
    assert again.config().init_from.kept_classifier
    assert models.get(again.global_key(0)) == models.get(TrainingRun(None, "straight").global_key(2))

    photo = max((PHOTOS / "test" / "sunflower").glob("*.jpg"))
    capsys.readouterr()
    assert main([*where, "predict", str(photo), "--model", "flowers", "--json"]) == 0
    response = json.loads(capsys.readouterr().out)["results"][0]
    assert {t["label"] for t in response["top"]} <= set(CLASSES) and response["top"][0]["label"] == "sunflower"
    assert main([*where, "predictions", "--model", "flowers", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == response["id"]


def test_conflicting_options_and_a_foreign_recipe_are_refused_before_any_work(world):
    invoker = world["session"].invoker
    before = len(invoker.records)
    with pytest.raises(TrainingFailed, match=r"prepared with recipe .* expects .*--recipe-from squeezenet1.1:v1"):
        train(world, "wrong-recipe", 1, init_from="squeezenet1.1", dataset="small")
    with pytest.raises(TrainingFailed, match=r"--version 1.0 conflicts with --init-from squeezenet1.1 v1"):
        train(world, "wrong-version", 1, init_from="squeezenet1.1", version="1.0")
    with pytest.raises(TrainingFailed, match="--stem conflicts"):
        train(world, "wrong-stem", 1, init_from="squeezenet1.1", stem="small")
    with pytest.raises(TrainingFailed, match="unknown model 'nope'"):
        train(world, "no-model", 1, init_from="nope")
    # A version written before versions kept their Keras weights still serves, but cannot seed a run.
    models = world["models"]
    for name in ("model.tflite", "labels.json", "recipe.json", "meta.json"):
        models.put(f"models/old/v1/{name}", models.get(f"models/squeezenet1.1/v1/{name}"))
    models.put("models/old/latest", b"v1")
    with pytest.raises(TrainingFailed, match=r"written before versions kept their Keras weights.*import-onnx"):
        train(world, "from-old", 1, init_from="old")
    assert len(invoker.records) == before
