"""Data-parallel training end to end: Fashion-MNIST -> prepare -> train, on the local invoker.

Real worker processes run the real train handler. Failures are real too: a packed shard is
overwritten with junk, so the worker that reads it raises.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from dlpipe.datasets import fashion_mnist
from dlpipe.datasets import manifest as manifests
from dlpipe.runs.run import TrainingRun
from dlpipe.shared.config import Settings
from dlpipe.shared.store import DirStore
from dlpipe.train.weights import load_weights, save_weights
from orchestrator import functions
from orchestrator.cli import main
from orchestrator.commands.fashion_mnist import write_fashion_mnist
from orchestrator.session import Session
from orchestrator.settings import download_cache_dir
from orchestrator.training.loop import TrainingFailed, TrainOptions, run_training
from orchestrator.training.prepare import prepare_dataset

HANGING = Path(__file__).parent / "handlers" / "hanging_train.py"

@pytest.fixture(scope="module")
def fashion_mnist_files():
    for folder in (*fashion_mnist.FASHION_MNIST_DIRS, download_cache_dir() / "fashion-mnist"):
        if (Path(folder) / "t10k-labels-idx1-ubyte.gz").is_file():
            return
    pytest.skip("Fashion-MNIST IDX files are absent: install the Debian package dataset-fashion-mnist")


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def learned(tmp_path_factory, fashion_mnist_files):
    """The CLI end to end: 2000 train / 500 test images, 2 workers x 3 rounds."""
    home = tmp_path_factory.mktemp("cli")
    where = ["--home", str(home / "home"), "--concurrency", "2"]
    outputs = {}
    outputs["fashion"] = cli(*where, "fashion-mnist", "--splits", "train", "--limit", "2000")
    cli(*where, "fashion-mnist", "--splits", "test", "--limit", "500")
    outputs["prepare"] = cli(*where, "prepare", "--source", "fashion-mnist/train", "--val-source",
                             "fashion-mnist/test", "--dataset", "fm", "--workers", "2", "--recipe", "fashion-mnist")
    outputs["train"] = cli(*where, "train", "--dataset", "fm", "--run", "ref", "--rounds", "3", "--batch-size", "32",
                           "--local-epochs", "2", "--output", str(home / "out"))
    settings = Settings.from_env({"DLPIPE_HOME": str(home / "home")})
    return {"home": home, "outputs": outputs, "data": settings.data_store(), "models": settings.model_store()}


@pytest.mark.slow
def test_cli_prepares_and_trains_a_model_that_learns(learned):
    for name, (code, text) in learned["outputs"].items():
        assert code == 0, f"{name} failed:\n{text}"
    prepare_out, train_out = learned["outputs"]["prepare"][1], learned["outputs"]["train"][1]
    assert "2000 images in 2 shards (1000-1000 each)" in prepare_out
    assert "500 images from fashion-mnist/test" in prepare_out
    manifest = json.loads(learned["data"].get(manifests.manifest_key("fm")))
    assert manifest["classes"] == sorted(fashion_mnist.FASHION_MNIST_CLASSES)
    assert [s["count"] for s in manifest["shards"]] == [1000, 1000] and manifest["val"]["count"] == 500

    for r in (1, 2, 3):
        assert f"round   {r}  workers 2/2" in train_out
    models = learned["models"]
    records = TrainingRun(models, "ref").records()
    assert [r.round for r in records] == [0, 1, 2, 3]
    val = [r.val.accuracy for r in records[1:]]
    # Chance is 10%: three short rounds must get far past it, and the last beats the first.
    assert val[-1] > 0.3 and val[-1] > val[0], val
    assert all(r.train.examples == 4000 for r in records[1:])
    assert "validation       loss" in train_out and "invocations" in train_out and "GB-s" in train_out

    # The layout: config, weights per round, no leftover worker weights, metrics and plot.
    config = TrainingRun(models, "ref").config().model_dump(mode="json")
    assert config["model"]["small_inputs"] is True and config["model"]["input_shape"] == [32, 32, 1]
    # --batch-size 32 is the batch across the 2 workers (16 each); the warm-up is the new runs' default, and
    # rounds of whole epochs average plainly (outer lr 1, momentum 0) when the outer step is not asked for; the
    # Adam state and the workers' rounds (differences from the global weights) are stored in bfloat16, and 2
    # workers are one aggregation node (fan-in 16).
    assert config["training"] == {"local_epochs": 2, "local_steps": None, "batch_size": 32, "learning_rate": 0.001,
                                  "seed": 0, "warmup_epochs": 1.0, "trainable": "all", "workers": 2,
                                  "batch_across_workers": True, "lr_scaling": "sqrt", "outer_learning_rate": 1.0,
                                  "outer_momentum": 0.0, "worker_optimizer": "averaged",
                                  "optimizer_precision": "bfloat16", "update_precision": "bfloat16",
                                  "fan_in": 16}
    assert all(r["steps"] == 2 * -(-1000 // 16) for record in records[1:] for r in record.worker_results)
    assert [r.epochs for r in records] == [0.0, 2.0, 4.0, 6.0] and all(r.lambda_seconds for r in records)
    assert "epoch 6.00" in train_out and "on Lambda" in train_out
    assert all(models.exists(TrainingRun(None, "ref").global_key(r)) for r in range(4))
    assert not list(models.list("runs/ref/rounds/0003/workers/"))
    metrics = json.loads(models.get(TrainingRun(None, "ref").metrics_key))
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    assert models.get(TrainingRun(None, "ref").plot_key)[:8] == b"\x89PNG\r\n\x1a\n"
    local = learned["home"] / "out"
    assert json.loads((local / "ref-metrics.json").read_text()) == metrics
    assert (local / "ref-metrics.png").read_bytes()[:4] == b"\x89PNG"
    weights, model_config = TrainingRun(models, "ref").load_global()
    assert model_config.labels == manifest["classes"] and len(weights) == 52

    # Starting the same run again is refused; resuming a finished run has nothing to do.
    where = ["--home", str(learned["home"] / "home"), "--concurrency", "2"]
    code, _ = cli(*where, "train", "--dataset", "fm", "--run", "ref", "--rounds", "3")
    assert code == 2          # bad usage: nothing done (orchestrator.errors)
    code, text = cli(*where, "train", "--dataset", "fm", "--run", "ref", "--rounds", "3", "--resume",
                     "--output", str(local))
    assert code == 0 and "nothing to train" in text


# --- resume and failures on a tiny dataset, with warm workers shared between runs ---------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory, fashion_mnist_files):
    root = tmp_path_factory.mktemp("tiny")
    settings = Settings(data_url=str(root / "data"), model_url=str(root / "models"),
                        table_url=f"sqlite:///{root}/t.sqlite")
    session = Session(settings, "local", concurrency=2)
    write_fashion_mnist(settings.data_store(), "fm", limit=360, splits=("train",), progress=False)
    prepare_dataset(session, "fm/train", "tiny", 2, fashion_mnist.FASHION_MNIST_RECIPE, val_fraction=0.2,
                    progress=False)
    yield {"session": session, "root": root, "data": settings.data_store(), "models": settings.model_store()}
    session.close()


def options(run: str, rounds: int, **changes) -> TrainOptions:
    base = {"dataset": "tiny", "run": run, "rounds": rounds, "local_epochs": 1, "batch_size": 32, "seed": 4,
            "output_dir": None}
    return TrainOptions(**{**base, **changes})


def train(tiny, opts: TrainOptions):
    return run_training(tiny["session"], opts, out=io.StringIO(), progress=False)


@contextlib.contextmanager
def corrupt_shard(tiny, worker: int):
    """Overwrite a worker's packed part with junk; put it back afterwards."""
    manifest = json.loads(tiny["data"].get(manifests.manifest_key("tiny")))
    key = manifest["shards"][worker]["parts"][0]
    original = tiny["data"].get(key)
    tiny["data"].put(key, b"junk where a shard should be")
    try:
        yield key
    finally:
        tiny["data"].put(key, original)


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tiny):
    models = tiny["models"]
    train(tiny, options("straight", 3))
    reference = load_weights(models, TrainingRun(None, "straight").global_key(3))

    train(tiny, options("bumpy", 1))
    round1 = models.get(TrainingRun(None, "bumpy").global_key(1))
    # Round 2 fails for good on worker 1: the run stops, round 1 stays the last good checkpoint.
    with corrupt_shard(tiny, 1), pytest.raises(TrainingFailed) as failure:
        train(tiny, options("bumpy", 3, resume=True, retries=1))
    message = str(failure.value)
    assert "round 2: only 1 of 2 workers succeeded (need 2) after 1 retries" in message
    assert "worker 1: CorruptPart" in message and "--resume" in message and "--min-workers" in message
    assert TrainingRun(models, "bumpy").latest_round() == 1
    assert models.get(TrainingRun(None, "bumpy").global_key(1)) == round1
    assert not models.exists(TrainingRun(None, "bumpy").global_key(2))

    # Resume to round 2, then fake a crash after round 3's weights were written but before
    # its record and pointer: resuming must redo round 3 and land on the same weights.
    train(tiny, options("bumpy", 2, resume=True))
    train(tiny, options("bumpy", 3, resume=True))
    assert same(load_weights(models, TrainingRun(None, "bumpy").global_key(3)), reference)
    models.delete(TrainingRun(None, "bumpy").record_key(3))
    models.put(TrainingRun(None, "bumpy").latest_key, json.dumps({"round": 2}).encode())
    save_weights(models, TrainingRun(None, "bumpy").global_key(3), [np.zeros(1, np.float32)])  # a torn, wrong file
    result = train(tiny, options("bumpy", 3, resume=True))
    assert result.rounds_run == 1 and TrainingRun(models, "bumpy").latest_round() == 3
    assert same(load_weights(models, TrainingRun(None, "bumpy").global_key(3)), reference)
    # The records of a resumed run read like an uninterrupted one's.
    assert [r.round for r in TrainingRun(models, "bumpy").records()] == [0, 1, 2, 3]

    # Hyper-parameters of a run cannot change on resume.
    with pytest.raises(TrainingFailed, match="trained with batch-size 32"):
        train(tiny, options("bumpy", 4, resume=True, batch_size=64))


@pytest.mark.slow
def test_min_workers_closes_a_round_on_the_survivors(tiny):
    models = tiny["models"]
    with corrupt_shard(tiny, 0) as key:
        result = train(tiny, options("survivor", 1, min_workers=1, retries=2, keep_worker_weights=True,
                                     outer_learning_rate=1.0, outer_momentum=0.0))
    record = result.final
    assert record.workers_ok == 1 and record.workers == 2
    failed = [f.model_dump() for f in record.failed_workers]
    assert [f["worker"] for f in failed] == [0] and failed[0]["attempts"] == 3
    assert "CorruptPart" in failed[0]["error"] and key in failed[0]["error"]
    assert result.failures and result.failures[0][0] == "round 1 worker 0"
    # With plain averaging the global model is worker 1's alone (an average of one: the round-0 weights plus its
    # difference from them, as it stored its round), and it was evaluated.
    run = TrainingRun(None, "survivor")
    start, difference = load_weights(models, run.global_key(0)), load_weights(models, run.worker_key(1, 1, 0))
    assert same(load_weights(models, run.global_key(1)), [s + d for s, d in zip(start, difference, strict=True)])
    assert same(load_weights(models, TrainingRun(None, "survivor").optimizer_key(1)),
                load_weights(models, TrainingRun(None, "survivor").worker_optimizer_key(1, 1, 0)))
    assert record.val.count == json.loads(tiny["data"].get(manifests.manifest_key("tiny")))["val"]["count"]
    assert record.train.examples == record.worker_results[0]["num_examples"]


@pytest.mark.slow
def test_a_worker_that_times_out_is_retried_and_the_round_is_unchanged(tiny, monkeypatch):
    models = tiny["models"]
    train(tiny, options("punctual", 1))
    # Worker 1's first attempt hangs past the function's time limit (long enough for a
    # cold worker to train this tiny shard) and is killed; its retry succeeds.
    monkeypatch.setitem(functions.FUNCTIONS, "train",
                        functions.FunctionSpec("train", f"{HANGING}:handler", 4096, 45, "TrainFunctionName"))
    result = train(tiny, options("late", 1, retries=1))
    record = result.final
    assert record.workers_ok == 2 and not record.failed_workers
    assert [r["attempt"] for r in record.worker_results] == [0, 1]
    assert result.failures == [] and any(
        not inv.ok and "Sandbox.Timedout: Task timed out after 45.00 seconds" in inv.error
        for inv in result.invocations)
    # A worker's training depends on (seed, round, worker), not on the attempt: same weights.
    assert same(load_weights(models, TrainingRun(None, "late").global_key(1)),
                load_weights(models, TrainingRun(None, "punctual").global_key(1)))


def test_bad_training_requests_are_refused_before_any_work(tiny):
    with pytest.raises(TrainingFailed, match=r"no prepared dataset 'nope'.*orchestrator prepare"):
        train(tiny, options("x", 1, dataset="nope"))
    with pytest.raises(TrainingFailed, match="prepared in 2 shards, so it can feed 1 to 2 workers, not 3"):
        train(tiny, options("x", 1, workers=3))
    with pytest.raises(TrainingFailed, match="--min-workers must be between 1 and 2"):
        train(tiny, options("x", 1, min_workers=5))
    assert TrainingRun(tiny["models"], "x").config() is None


@pytest.mark.slow
def test_prepare_and_train_on_s3_with_the_shard_cache(tmp_path, aws_env, monkeypatch, fashion_mnist_files):
    import boto3

    from dlpipe.shared.s3_store import S3Store

    s3 = boto3.client("s3")
    for bucket in ("dlpipe-train-data", "dlpipe-train-models"):
        s3.create_bucket(Bucket=bucket)
    cache = tmp_path / "shard-cache"
    monkeypatch.setenv("DLPIPE_SHARD_CACHE", str(cache))   # inherited by the spawned workers
    where = ["--home", str(tmp_path / "home"), "--data", "s3://dlpipe-train-data/p",
             "--models", "s3://dlpipe-train-models", "--concurrency", "2"]
    data, models = S3Store("dlpipe-train-data", "p"), S3Store("dlpipe-train-models")
    write_fashion_mnist(data, "fm", limit=240, splits=("train",), progress=False)
    assert cli(*where, "prepare", "--source", "fm/train", "--dataset", "s3fm", "--workers", "2",
               "--val-fraction", "0.25", "--recipe", "fashion-mnist")[0] == 0
    settings = Settings(data_url=data.url, model_url=models.url, table_url=f"sqlite:///{tmp_path}/t.sqlite")
    with contextlib.closing(Session(settings, "local", concurrency=2)) as session:
        opts = TrainOptions(dataset="s3fm", run="s3run", rounds=2, local_epochs=1, batch_size=32, output_dir=None)
        run_training(session, opts, out=io.StringIO(), progress=False)
        assert TrainingRun(models, "s3run").latest_round() == 2 and models.exists(TrainingRun(None, "s3run").plot_key)
        manifest = json.loads(data.get(manifests.manifest_key("s3fm")))
        parts = [k for s in manifest["shards"] for k in s["parts"]] + manifest["val"]["parts"]
        # The workers kept their parts in /tmp: exactly the prepared parts' bytes...
        cached = sorted(p.read_bytes() for p in cache.glob("*.npz"))
        assert cached == sorted(data.get(k) for k in parts)
        # ...and read them from there: with the parts gone from S3, a third round still runs.
        for key in parts:
            data.delete(key)
        opts.rounds, opts.resume = 3, True
        run_training(session, opts, out=io.StringIO(), progress=False)
    weights, config = TrainingRun(models, "s3run").load_global()
    assert TrainingRun(models, "s3run").latest_round() == 3 and config.classes == 10 and len(weights) == 52


@pytest.mark.parametrize("args, code, message", [
    (["prepare", "--source", "photos", "--dataset", "d", "--workers", "2"], 2,
     "no images in class folders under 'photos/'"),
    (["prepare", "--source", "photos", "--dataset", "bad/name", "--workers", "2"], 2,
     "argument --dataset: invalid name"),
    (["prepare", "--source", "photos", "--dataset", "d", "--workers", "0"], 2, "argument --workers: 0 is out of range"),
    (["train", "--dataset", "d", "--run", "r", "--rounds", "2"], 2, "no prepared dataset 'd'"),
    (["train", "--dataset", "d", "--run", "../r", "--rounds", "2"], 2, "argument --run: invalid name '../r'"),
    (["fashion-mnist", "--limit", "0"], 2, "argument --limit: 0 is out of range"),
])
def test_usage_errors_say_what_to_do(tmp_path, capsys, args, code, message):
    try:
        status = main(["--home", str(tmp_path / "home"), *args])
    except SystemExit as stop:   # refused by the option's own type (orchestrator.options)
        status = stop.code
    assert status == code
    assert message in capsys.readouterr().err


def test_prepare_lists_unreadable_images_and_packs_the_rest(tmp_path, capsys):
    from PIL import Image

    store = DirStore(tmp_path / "home" / "data")
    for label, value in (("a", 30), ("b", 200)):
        for i in range(6):
            buffer = io.BytesIO()
            Image.new("RGB", (40, 30), (value, i * 20, 0)).save(buffer, "PNG")
            store.put(f"photos/{label}/{i}.png", buffer.getvalue())
    store.put("photos/b/broken.jpg", b"\xff\xd8 truncated")
    args = ["--home", str(tmp_path / "home"), "--concurrency", "2", "prepare", "--source", "photos",
            "--dataset", "mini", "--workers", "2", "--val-fraction", "0.25", "--size", "16", "--part-size", "2"]
    assert main(args) == 1          # something was skipped: the exit status says so
    out = capsys.readouterr().out
    assert "photos/b/broken.jpg: " in out and "not a recognised image" in out and "1 unreadable images" in out
    manifest = json.loads(store.get(manifests.manifest_key("mini")))
    assert manifest["counts"]["train"] + manifest["counts"]["val"] == 12 and manifest["counts"]["skipped"] == 1
    assert all(len(s["parts"]) >= 2 for s in manifest["shards"])   # --part-size 2 cut the shards up
    first_parts = {k for s in manifest["shards"] for k in s["parts"]}
    assert main(args) == 1          # the same again: the same parts and dataset id, so runs on it may resume
    again = json.loads(store.get(manifests.manifest_key("mini")))
    assert again["id"] == manifest["id"] and again["shards"] == manifest["shards"]
    assert main(args[:-2] + ["--part-size", "100"]) == 1           # prepared differently: the old parts are removed
    capsys.readouterr()
    left = set(store.list(manifests.dataset_prefix("mini")))
    assert not left & first_parts and manifests.manifest_key("mini") in left
    assert json.loads(store.get(manifests.manifest_key("mini")))["id"] != manifest["id"]


def test_prepare_lists_a_part_none_of_whose_images_decode_and_packs_the_rest(tmp_path, capsys):
    from PIL import Image

    store = DirStore(tmp_path / "home" / "data")
    for label in ("a", "b"):
        for i in range(4):
            buffer = io.BytesIO()
            Image.new("L", (20, 20), 40 + i).save(buffer, "PNG")
            store.put(f"photos/{label}/{i}.png", buffer.getvalue())
    store.put("test/a/empty.png", b"")             # the whole validation set: one part, nothing decodes
    args = ["--home", str(tmp_path / "home"), "prepare", "--source", "photos", "--val-source", "test",
            "--dataset", "v", "--workers", "2", "--size", "8", "--retries", "0"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "test/a/empty.png: NothingPacked: none of the 1 images for datasets/v/val/part-000" in out
    manifest = json.loads(store.get(manifests.manifest_key("v")))
    assert manifest["counts"] == {"train": 8, "val": 0, "skipped": 1, "train_per_class": {"a": 4, "b": 4}}
    assert manifest["val"] == {"parts": [], "count": 0} and not list(store.list("datasets/v/val/"))


def test_prepare_refuses_shards_no_worker_could_hold_before_any_work(tmp_path, capsys, monkeypatch):
    """With a 1024 MB train function, a 224 px shard of 450 images does not fit even at batch 1."""
    monkeypatch.setitem(functions.FUNCTIONS, "train",
                        functions.FunctionSpec("train", "functions/train/app.py:handler", 1024, 900, "Train"))
    store = DirStore(tmp_path / "home" / "data")
    for i in range(450):
        store.put(f"photos/{'ab'[i % 2]}/{i}.png", b"never decoded: the check comes first")
    args = ["--home", str(tmp_path / "home"), "prepare", "--source", "photos", "--dataset", "big", "--workers", "1",
            "--val-fraction", "0", "--recipe", "imagenet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "a shard of 450 224x224x3 images needs about" in err and "train function's 1,024 MB" in err
    assert "use --workers 2 or more" in err
    assert not list(store.list("datasets/"))          # nothing packed
    assert main(args[:-5] + ["2", "--val-fraction", "0", "--recipe", "imagenet", "--retries", "0"]) == 2
    assert "a shard of" not in capsys.readouterr().err   # 2 shards fit; packing then fails on the junk
