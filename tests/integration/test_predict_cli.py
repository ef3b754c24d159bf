"""`orchestrator export / import-onnx / models / predict / predictions`, end to end through the CLI.

Real worker processes (the local invoker) run the predict handler; the table is SQLite, or
DynamoDB as served by the moto server. Includes the load test: 200 predictions at
concurrency 8, every one answered and recorded.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path

import imagefiles as f
import pytest
from PIL import Image

from dlpipe.publish.export import export_model
from dlpipe.runs.record import RoundRecord
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import DirStore
from dlpipe.shared.table import DynamoTable, SqliteTable
from dlpipe.wire import PredictRequest
from orchestrator.cli import main
from orchestrator.invokers.local import LocalInvoker

LABELS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def tiny_model():
    from dlpipe.train.model import squeezenet

    return squeezenet("1.1", (32, 32, 3), len(LABELS), small_inputs=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model) -> Path:
    """A model store with `tiny` v1 (exported once for the module; tests only read it)."""
    root = tmp_path_factory.mktemp("models")
    export_model(tiny_model, DirStore(root), "tiny", LABELS, Recipe(size=32))
    return root


@pytest.fixture
def where(tmp_path, model_dir) -> list[str]:
    """Global options: a fresh data store and table per test, the shared model store."""
    return ["--home", str(tmp_path / "home"), "--data", str(tmp_path / "data"), "--models", str(model_dir),
            "--table", f"sqlite:///{tmp_path}/predictions.sqlite", "--concurrency", "2"]


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    paths = {"cat.jpg": f.jpeg(64, 48, seed=1), "dog.png": f.encode(f.photo(40, 56, seed=2), "PNG"),
             "notes.jpg": f.text_as_jpg()}
    (tmp_path / "in").mkdir()
    for name, data in paths.items():
        (tmp_path / "in" / name).write_bytes(data)
    return {name: tmp_path / "in" / name for name in paths}


def test_predict_local_files_and_store_keys_as_json(where, files, tmp_path, capfd):
    DirStore(tmp_path / "data").put("raw/bird.jpg", f.jpeg(50, 50, seed=3))
    args = [files["cat.jpg"], files["dog.png"], "store:raw/bird.jpg", "raw/bird.jpg", files["notes.jpg"],
            "raw/missing.jpg"]
    rc = main([*where, "--verbose", "predict", *map(str, args), "--top-k", "2", "--json"])
    captured = capfd.readouterr()
    assert rc == 1                                     # some images failed
    # stdout is pure JSON: the summary and the workers' function logs (shown with --verbose, captured at
    # the fd level) go to stderr
    out = json.loads(captured.out)["results"]
    assert '"level":"INFO"' in captured.err
    assert [o["image"] for o in out] == [str(a) for a in args]
    assert [o.get("statusCode") for o in out[:4]] == [200] * 4
    assert all(len(o["top"]) == 2 and o["model"] == {"name": "tiny", "version": "v1"} for o in out[:4])
    assert out[2]["top"] == out[3]["top"]              # store:KEY and a bare key are the same image
    assert "not a recognised image" in out[4]["error"]
    assert "no image at key 'raw/missing.jpg'" in out[5]["error"]
    assert re.search(r"images +6 \(4 predicted, 2 failed\)", captured.err)
    assert re.search(r"failed +\S*/notes.jpg: not a recognised image", captured.err)

    assert main([*where, "predictions", "--json"]) == 0
    records = json.loads(capfd.readouterr().out)
    assert len(records) == 4
    assert sorted(r["image_key"] or r["image_name"] for r in records) == ["cat.jpg", "dog.png", "raw/bird.jpg",
                                                                          "raw/bird.jpg"]
    assert {r["id"] for r in records} == {o["id"] for o in out[:4]}


def test_predict_prints_tables_and_draws_one_row_per_image(where, files, tmp_path, capsys):
    show = tmp_path / "top.png"
    rc = main([*where, "predict", str(files["cat.jpg"]), str(files["dog.png"]), "--show", str(show)])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("   tiny v1   ") == 2 and out.count("   1. ") == 2 and out.count("   3. ") == 2
    assert "2 (2 predicted, 0 failed)" in out and "invocations" in out and "GB-s" in out
    with Image.open(show) as picture:
        assert picture.format == "PNG" and picture.size == (900, 520)    # 9 x 2.6 in per row at 100 dpi

    assert main([*where, "predictions"]) == 0
    listing = capsys.readouterr().out
    assert "cat.jpg" in listing and "dog.png" in listing and "2 shown" in listing


def test_model_choice_errors_say_what_exists(where, files, tmp_path, capsys, model_dir):
    other, exported = DirStore(tmp_path / "models2"), DirStore(model_dir)
    for name in ("tiny", "second"):          # copies of the exported version under two names
        for key in exported.list("models/tiny/"):
            other.put(key.replace("models/tiny/", f"models/{name}/"), exported.get(key))
    where2 = [*where, "--models", str(other.root)]
    assert main([*where2, "predict", str(files["cat.jpg"])]) == 2
    assert "error: several models are served, choose one with --model: second, tiny" in capsys.readouterr().err
    assert main([*where2, "predict", str(files["cat.jpg"]), "--model", "tiny", "--version", "v7"]) == 1
    assert "model 'tiny' has no version 'v7'; versions: v1" in capsys.readouterr().out
    assert main([*where2, "models"]) == 0
    listing = capsys.readouterr().out
    assert "second" in listing and "v1 *" in listing


def test_export_a_training_run_then_predict_with_it(tmp_path, files, capsys):
    from dlpipe.runs.run import RunConfig, Training, TrainingRun
    from dlpipe.train.model import build_model, model_config_for

    models = DirStore(tmp_path / "models")
    recipe = Recipe(size=32, channels=1, mean=(0.5,), std=(0.5,))
    config = model_config_for(recipe, ["shirt", "shoe", "bag", "coat"])
    run = TrainingRun(models, "r1")
    run.start(RunConfig(model=config, dataset="d", training=Training(workers=1), created="now"))
    trained = build_model(config)
    run.save_weights(run.global_key(0), trained.get_weights())
    run.commit_round(0, RoundRecord(kind="init", workers=0, workers_ok=0, wall_seconds=0.0, gb_seconds=0.0))
    where = ["--home", str(tmp_path / "home"), "--models", str(models.root), "--concurrency", "1"]

    assert main([*where, "export", "--run", "r1"]) == 0
    assert "r1 v1 (now latest)" in capsys.readouterr().out
    meta = json.loads(models.get("models/r1/v1/meta.json"))
    assert meta["source"] == {"kind": "run", "run": "r1", "round": 0, "init_from": None, "trainable": "all"}
    assert meta["input_shape"] == [32, 32, 1] and models.exists("models/r1/v1/weights.npz")
    assert main([*where, "export", "--run", "r1", "--round", "5"]) == 2
    assert "round 5 is not one of them" in capsys.readouterr().err
    assert main([*where, "export", "--run", "r9"]) == 2
    assert "no training run 'r9'" in capsys.readouterr().err

    assert main([*where, "predict", str(files["cat.jpg"]), "--json"]) == 0     # an RGB photo, a greyscale model
    response = json.loads(capsys.readouterr().out)["results"][0]
    assert response["model"] == {"name": "r1", "version": "v1"}
    assert {t["label"] for t in response["top"]} == {"shirt", "shoe", "bag", "coat"}


def test_import_pretrained_onnx_then_predict_a_photo(shared_models, tmp_path, capsys):
    from skimage import data

    photo = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(photo)
    where = ["--home", str(tmp_path / "home"), "--concurrency", "1"]
    assert main([*where, "import-onnx", str(shared_models / "squeezenet1.1.onnx"),
                 "--labels", str(shared_models / "imagenet_synset_words.txt")]) == 0
    assert "SqueezeNet 1.1, input 224x224x3" in capsys.readouterr().out
    assert main([*where, "predict", str(photo)]) == 0
    out = capsys.readouterr().out
    assert "   1. Egyptian cat" in out and "squeezenet1.1 v1" in out


def test_load_200_predictions_at_concurrency_8_all_answered_and_recorded(tmp_path, model_dir):
    table_path = tmp_path / "predictions.sqlite"
    env = {"DLPIPE_DATA_URL": str(tmp_path / "data"), "DLPIPE_MODEL_URL": str(model_dir),
           "DLPIPE_TABLE_URL": f"sqlite:///{table_path}"}
    images = [base64.b64encode(f.jpeg(48, 40, seed=i)).decode() for i in range(10)]
    events = [PredictRequest(model="tiny", image_b64=images[i % 10], name=f"img{i}.jpg",
                             request_id=str(uuid.uuid4())).model_dump(exclude_none=True) for i in range(200)]
    with LocalInvoker(concurrency=8, env=env) as invoker:
        results = list(invoker.map("predict", events))
    assert len(results) == 200
    failures = [(r.index, r.error or r.payload) for r in results if not (r.ok and r.payload["statusCode"] == 200)]
    assert failures == []
    assert len({r.payload["id"] for r in results}) == 200
    table = SqliteTable(table_path)
    assert table.count() == 200
    assert {r.id for r in table.list(None)} == {r.payload["id"] for r in results}


def test_predictions_in_dynamodb_on_the_moto_server(aws_env, files, tmp_path, model_dir, capsys):
    DynamoTable.create("predictions-it")
    where = ["--home", str(tmp_path / "home"), "--models", str(model_dir), "--table", "dynamodb://predictions-it",
             "--concurrency", "2"]
    assert main([*where, "predict", str(files["cat.jpg"]), str(files["dog.png"]), "--json"]) == 0
    ids = {o["id"] for o in json.loads(capsys.readouterr().out)["results"]}
    assert main([*where, "predictions", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["id"] for r in records} == ids
    assert all(isinstance(r["top"][0]["probability"], float) for r in records)
    assert main([*where, "--table", "dynamodb://no-such-table", "predictions"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_images_too_big_to_send_inline_are_refused_before_sending(where, tmp_path, capsys):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + bytes(4_800_000))          # 6.4 MB once base64-encoded
    assert main([*where, "predict", str(big), "--model", "tiny"]) == 1
    out = capsys.readouterr().out
    assert "big.jpg   FAILED: 4.8 MB is too big to send inline" in out and "pass store:KEY" in out
    assert "invocations" not in out                           # nothing was sent
