"""The train function, called as Lambda calls it, with events shaped like events/train.json.

The central check: one worker's round is exactly plain Keras training (model.fit on the
same data in the same order, same initial weights and dropout seed).
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlpipe.runs.run import TrainingRun
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import DirStore
from dlpipe.train import batches, parts
from dlpipe.train import worker as training
from dlpipe.train.model import build_model
from dlpipe.train.weights import CheckpointError, load_weights
from dlpipe.wire import ModelConfig
from orchestrator.invokers.local import LocalContext

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "functions" / "train" / "app.py"
EVENT = json.loads((REPO / "events" / "train.json").read_text())
RECIPE = Recipe.from_dict(EVENT["model"]["recipe"])
CLASSES = 3
PER_CLASS = 24


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Stores with a packed shard and validation part of small synthetic greyscale images."""
    root = tmp_path_factory.mktemp("train")
    data, models = DirStore(root / "data"), DirStore(root / "models")
    rng = np.random.default_rng(7)
    items = []
    for label in range(CLASSES):
        for i in range(PER_CLASS):
            image = rng.integers(0, 60, (28, 28), dtype=np.uint8)
            image[:, label * 9:(label + 1) * 9] += 150  # a class-specific bright band
            key = f"raw/c{label}/{i:03d}.png"
            data.put(key, png(image))
            items.append((key, label))
    train = parts.pack_part(data, items[::2] + items[1::2][:24], RECIPE, "datasets/t/train/shard-000/part-000")
    val = parts.pack_part(data, items[1::2][24:], RECIPE, "datasets/t/val/part-000")
    return {"root": root, "data": data, "models": models, "train": train, "val": val}


@pytest.fixture
def handler(world, monkeypatch):
    monkeypatch.setenv("DLPIPE_DATA_URL", str(world["data"].root))
    monkeypatch.setenv("DLPIPE_MODEL_URL", str(world["models"].root))
    spec = importlib.util.spec_from_file_location("train_app_under_test", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


def context(timeout_s: float = 900) -> LocalContext:
    return LocalContext("train", 4096, timeout_s, "test-request")


def model_dict() -> dict:
    return {**EVENT["model"], "classes": CLASSES, "labels": [f"c{i}" for i in range(CLASSES)]}


def init(handler, run: str, seed: int = 3) -> str:
    key = TrainingRun(None, run).global_key(0)
    response = handler({"action": "init", "model": model_dict(), "seed": seed, "output_key": key}, context())
    assert response["weights_key"] == key and response["arrays"] == 52
    return key


def train_event(world, run: str, **changes) -> dict:
    """events/train.json, pointed at this test's run and shard."""
    event = json.loads(json.dumps(EVENT))
    event.update(run=run, global_key=TrainingRun(None, run).global_key(0), shard_keys=[world["train"].key],
                 output_key=TrainingRun(None, run).worker_key(1, 0), model=model_dict())
    event["hyper"].update(batch_size=16, local_epochs=2, seed=11)
    event.update(changes)
    return event


@pytest.mark.slow
def test_one_worker_round_equals_plain_keras_fit(world, handler):
    import keras

    init_key = init(handler, "plain")
    event = train_event(world, "plain")
    response = handler(event, context())
    assert response["num_examples"] == 2 * world["train"].count and not response["stopped_early"]
    assert response["epochs_done"] == 2 and response["steps"] == 2 * -(-world["train"].count // 16)
    worker = load_weights(world["models"], event["output_key"])

    # The same thing by hand, with nothing from the train function but the seed rules.
    x, y = parts.npz_to_arrays(world["data"].get(world["train"].key))
    hyper = event["hyper"]
    initial = load_weights(world["models"], init_key)
    model = build_model(ModelConfig(**model_dict()), initial,
                                    dropout_seed=training.dropout_seed(hyper["seed"], 1, 0))
    model.compile(optimizer=keras.optimizers.Adam(hyper["learning_rate"]),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    for epoch in range(2):
        order = batches.epoch_order(hyper["seed"], 1, 0, epoch, len(y))
        history = model.fit(RECIPE.normalize(x[order]), y[order], batch_size=16, shuffle=False, verbose=0)
    expected = model.get_weights()

    assert len(worker) == len(expected)
    for got, want in zip(worker, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert response["loss"] == pytest.approx(history.history["loss"][-1], rel=1e-6)
    # ...and training moved the weights (the comparison is not between two copies of the init).
    assert max(float(np.abs(a - b).max()) for a, b in zip(worker, initial, strict=True)) > 1e-3


def test_a_worker_stores_its_adam_state_in_bfloat16_when_asked_the_same_state_rounded(world, handler):
    states = {}
    for precision in ("float32", "bfloat16"):
        run = f"state-{precision}"
        init(handler, run)
        event = train_event(world, run, output_optimizer_key=TrainingRun(None, run).worker_optimizer_key(1, 0))
        event["hyper"].update(local_epochs=1, optimizer_precision=precision)
        reply = handler(event, context())
        with np.load(io.BytesIO(world["models"].get(reply["optimizer_key"]))) as archive:
            states[precision] = (sorted({name[0] for name in archive.files}), reply["weights_bytes"])
        states[precision] += (load_weights(world["models"], reply["optimizer_key"]),)
    (kinds32, bytes32, exact), (kinds16, bytes16, rounded) = states["float32"], states["bfloat16"]
    assert kinds32 == ["w"] and kinds16 == ["b", "w"]     # the step count stays float64 ("w0000")
    assert rounded[0] == exact[0] and bytes16 < bytes32
    for got, want in zip(rounded[1:], exact[1:], strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=2 ** -8, atol=0)


def test_a_warmed_environment_trains_the_very_weights_a_cold_one_does(world, handler):
    run = "warmed"
    init(handler, run)
    event = train_event(world, run)
    event["hyper"].update(local_epochs=1)
    training._MODELS.clear()                                    # cold: nothing compiled in this process
    cold = handler(event, context())
    cold_weights = load_weights(world["models"], cold["weights_key"])
    training._MODELS.clear()
    warm = {"action": "warm", "model": model_dict(), "warmup": {"trainable": "all", "batch_size": 16}}
    first, again = handler(warm, context()), handler(warm, context())
    assert (first["action"], first["was_warm"], again["was_warm"]) == ("warm", False, True)
    assert not world["models"].exists(TrainingRun(None, run).worker_key(1, 1))   # a warm-up stores nothing
    warmed = handler(event, context())
    assert [a.tobytes() for a in load_weights(world["models"], warmed["weights_key"])] == \
        [a.tobytes() for a in cold_weights]
    assert warmed["loss"] == cold["loss"]
    # init can get its own environment ready the same way, beside making the weights
    key = TrainingRun(None, "warm-init").global_key(0)
    training._MODELS.clear()
    done = handler({"action": "init", "model": model_dict(), "seed": 3, "output_key": key,
                    "warmup": {"trainable": "all", "batch_size": 16}}, context())
    assert done["weights_key"] == key and training._MODELS


def test_a_worker_stores_its_round_as_bfloat16_differences_from_the_global_weights_when_asked(world, handler):
    stored = {}
    for precision in ("float32", "bfloat16"):
        run = f"update-{precision}"
        init_key = init(handler, run)
        event = train_event(world, run)
        event["hyper"].update(local_epochs=1, update_precision=precision)
        reply = handler(event, context())
        with np.load(io.BytesIO(world["models"].get(reply["weights_key"]))) as archive:
            kinds = sorted({name[0] for name in archive.files})
        stored[precision] = (kinds, reply["weights_bytes"], reply["delta_from"],
                             load_weights(world["models"], reply["weights_key"]),
                             load_weights(world["models"], init_key))
    (kinds32, bytes32, from32, weights, start), (kinds16, bytes16, from16, differences, _) = \
        stored["float32"], stored["bfloat16"]
    assert (kinds32, from32) == (["w"], None)
    assert kinds16 == ["b"] and from16 == TrainingRun(None, "update-bfloat16").global_key(0)
    assert bytes16 < 0.55 * bytes32
    # the same round (the same seed and start), its step kept to bfloat16's 8 bits
    for w, d, s in zip(weights, differences, start, strict=True):
        assert d.dtype == np.float32
        np.testing.assert_allclose(d, w - s, rtol=2 ** -8, atol=float(np.abs(w - s).max()) * 2 ** -20)
    assert max(float(np.abs(d).max()) for d in differences) > 1e-3   # training moved the weights


@pytest.mark.slow
@pytest.mark.parametrize("warmup_epochs", [0.0, 1.5])
def test_second_round_continues_the_optimizer_like_one_long_fit(world, handler, warmup_epochs):
    """Round 2 starts from round 1's weights AND Adam state: one worker over two rounds is
    plain Keras training that simply goes on (with the dropout seed of each round), and a
    learning-rate warm-up longer than a round goes on where round 1 left it."""
    import keras

    run = f"long-{warmup_epochs}"
    init_key = init(handler, run)
    first = train_event(world, run, output_optimizer_key=TrainingRun(None, run).worker_optimizer_key(1, 0))
    first["hyper"].update(local_epochs=1, warmup_epochs=warmup_epochs)
    r1 = handler(first, context())
    second = {**first, "round": 2, "global_key": r1["weights_key"], "global_optimizer_key": r1["optimizer_key"],
              "output_key": TrainingRun(None, run).worker_key(2, 0),
              "output_optimizer_key": TrainingRun(None, run).worker_optimizer_key(2, 0)}
    r2 = handler(second, context())
    state = load_weights(world["models"], r2["optimizer_key"])
    assert state[0] == 2 * r2["steps"] and len(state) == 1 + 2 * 52   # steps, then Adam's m and v per weight

    x, y = parts.npz_to_arrays(world["data"].get(world["train"].key))
    seed = first["hyper"]["seed"]
    model = build_model(ModelConfig(**model_dict()), load_weights(world["models"], init_key),
                                    dropout_seed=training.dropout_seed(seed, 1, 0))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    warmup_steps = warmup_epochs * r1["steps"]
    rates = []

    def warm(batch, logs=None):  # the n-th step of the whole run (from 1) uses 0.001 * n / warmup_steps
        if warmup_steps:
            rate = 1e-3 * min(1.0, (int(model.optimizer.iterations.numpy()) + 1) / warmup_steps)
            model.optimizer.learning_rate.assign(rate)
        rates.append(float(model.optimizer.learning_rate.numpy()))

    for round_ in (1, 2):
        if round_ == 2:  # each round's dropout masks come from its own seed
            model.get_layer("dropout").seed_generator.state.assign([training.dropout_seed(seed, 2, 0), 0])
        order = batches.epoch_order(seed, round_, 0, 0, len(y))
        model.fit(RECIPE.normalize(x[order]), y[order], batch_size=16, shuffle=False, verbose=0,
                  callbacks=[keras.callbacks.LambdaCallback(on_train_batch_begin=warm)])
    if warmup_epochs:  # the schedule really rose over both rounds, then held
        assert rates[0] < rates[r1["steps"]] < rates[-1] == pytest.approx(1e-3)
    worker = load_weights(world["models"], r2["weights_key"])
    for got, want in zip(worker, model.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_warm_repeat_is_identical_and_seed_matters(world, handler):
    init(handler, "repeat")
    event = train_event(world, "repeat", time_budget_s=None)
    event["hyper"]["local_epochs"] = 1
    first = handler(event, context())
    a = load_weights(world["models"], first["weights_key"])
    again = handler({**event, "attempt": 1, "output_key": TrainingRun(None, "repeat").worker_key(1, 0, 1)}, context())
    b = load_weights(world["models"], again["weights_key"])
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    other = json.loads(json.dumps(event))
    other["hyper"]["seed"] = 12
    other["output_key"] = TrainingRun(None, "repeat").worker_key(1, 0, 2)
    handler(other, context())
    c = load_weights(world["models"], other["output_key"])
    assert not all(np.array_equal(u, v) for u, v in zip(a, c, strict=True))


def test_init_is_a_function_of_the_seed(world, handler):
    a = load_weights(world["models"], init(handler, "seed-a", seed=5))
    b = load_weights(world["models"], init(handler, "seed-b", seed=5))
    c = load_weights(world["models"], init(handler, "seed-c", seed=6))
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c, strict=True))


def test_deadline_stops_between_batches(world, handler):
    init(handler, "budget")
    # A function timeout just above the upload margin leaves no time: one batch, then stop.
    response = handler(train_event(world, "budget", time_budget_s=None),
                       context(timeout_s=training.DEFAULT_MARGIN_S + 0.05))
    assert response["stopped_early"] and response["steps"] == 1
    assert response["num_examples"] == 16 and response["epochs_done"] == 0
    # The explicit budget in the event does the same.
    response = handler(train_event(world, "budget", time_budget_s=0.001), context())
    assert response["stopped_early"] and response["steps"] == 1
    assert world["models"].exists(response["weights_key"])


def test_evaluate_matches_keras_evaluate(world, handler):
    key = init(handler, "eval")
    event = {"action": "evaluate", "weights_key": key, "shard_keys": [world["val"].key],
             "model": model_dict(), "batch_size": 8}
    response = handler(event, context())
    model = build_model(ModelConfig(**model_dict()), load_weights(world["models"], key))
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = parts.npz_to_arrays(world["data"].get(world["val"].key))
    loss, accuracy = model.evaluate(RECIPE.normalize(x), y, batch_size=8, verbose=0)
    assert response["count"] == len(y) == world["val"].count
    assert response["loss"] == pytest.approx(loss, rel=1e-5)
    assert response["accuracy"] == pytest.approx(accuracy)
    assert response["requests"] == {"get": 2, "put": 0, "list": 0, "head": 0, "delete": 0}   # the weights, the part


def test_init_and_train_replies_count_their_store_requests(world, handler):
    key = TrainingRun(None, "counted").global_key(0)
    response = handler({"action": "init", "model": model_dict(), "seed": 1, "output_key": key}, context())
    assert response["requests"] == {"get": 0, "put": 1, "list": 0, "head": 0, "delete": 0}
    response = handler(train_event(world, "counted", global_key=key, time_budget_s=0.001), context())
    assert response["requests"]["get"] == 2 and response["requests"]["put"] == 1   # weights + part in, weights out


def test_pack_action_skips_a_corrupt_image_with_its_reason(world, handler):
    world["data"].put("raw/c0/broken.png", b"\x89PNG\r\n\x1a\n not really")
    event = {"action": "pack", "items": [["raw/c0/000.png", 0], ["raw/c0/broken.png", 0], ["raw/c1/000.png", 1]],
             "recipe": EVENT["model"]["recipe"], "output_prefix": "datasets/p/train/shard-000/part-000"}
    response = handler(event, context())
    assert response["count"] == 2
    assert response["requests"] == {"get": 3, "put": 1, "list": 0, "head": 0, "delete": 0}
    assert [s["key"] for s in response["skipped"]] == ["raw/c0/broken.png"]
    assert response["skipped"][0]["reason"].startswith("ImageError: ")   # the decoder serving uses
    x, y = parts.npz_to_arrays(world["data"].get(response["key"]))
    assert x.shape == (2, 32, 32, 1) and x.dtype == np.uint8 and y.tolist() == [0, 1]
    # A part none of whose images decode fails the invocation; no empty part is stored.
    with pytest.raises(parts.NothingPacked, match="none of the 1 images for datasets/p/val/part-000"):
        handler({**event, "items": [["raw/c0/broken.png", 0]], "output_prefix": "datasets/p/val/part-000"}, context())
    assert not list(world["data"].list("datasets/p/val/"))


def test_bad_requests_fail_clearly_and_the_function_stays_usable(world, handler):
    init(handler, "bad")
    answer = handler({"action": "fly"}, context())
    assert answer["statusCode"] == 400 and "action" in answer["error"] and "Traceback" not in answer["error"]
    answer = handler({k: v for k, v in train_event(world, "bad").items() if k != "shard_keys"}, context())
    assert answer["statusCode"] == 400 and "shard_keys" in answer["error"]
    # Keys are checked before any work, not when the weights are saved after a training pass.
    answer = handler(train_event(world, "bad", output_key="../outside.npz"), context())
    assert answer["statusCode"] == 400 and "output_key" in answer["error"]
    answer = handler(train_event(world, "bad", model={**model_dict(), "classes": 10**9}), context())
    assert answer["statusCode"] == 400 and "classes" in answer["error"]
    missing = train_event(world, "bad", shard_keys=["datasets/t/train/shard-000/part-009-0000000000000000.npz"])
    with pytest.raises(parts.CorruptPart, match=r"missing.*prepare"):
        handler(missing, context())
    wrong_model = train_event(world, "bad", model={**model_dict(), "classes": CLASSES + 1,
                                                   "labels": [f"c{i}" for i in range(CLASSES + 1)]})
    with pytest.raises(CheckpointError, match="do not fit"):
        handler(wrong_model, context())
    # Still serving.
    assert handler(train_event(world, "bad", time_budget_s=0.001), context())["steps"] == 1


@pytest.mark.slow
def test_rounds_of_steps_continue_one_stream_like_one_long_fit(world, handler):
    """--local-steps 3 with 5 batches an epoch: round 2 finishes epoch 1 and starts epoch 2 of the
    worker's stream. One worker over the two rounds is plain model.fit on the stream's examples.

    Up to round-off: with no partial batch, Keras gives arrays a fixed batch dimension and the
    worker's batches (a PyDataset) a free one, and the two graphs round differently (about 1e-7
    after a round, which Adam amplifies). The wrong data order is a thousand times further off.
    """
    import keras

    run = "stream"
    init_key = init(handler, run)
    first = train_event(world, run, output_optimizer_key=TrainingRun(None, run).worker_optimizer_key(1, 0))
    first["hyper"].update(batch_size=12, local_steps=3)
    r1 = handler(first, context())
    second = {**first, "round": 2, "global_key": r1["weights_key"], "global_optimizer_key": r1["optimizer_key"],
              "output_key": TrainingRun(None, run).worker_key(2, 0),
              "output_optimizer_key": TrainingRun(None, run).worker_optimizer_key(2, 0)}
    r2 = handler(second, context())
    assert world["train"].count == 60 and r1["steps"] == r2["steps"] == 3
    assert r1["num_examples"] == r2["num_examples"] == 36
    assert (r1["epochs_done"], r2["epochs_done"]) == (0, 1)
    worker = load_weights(world["models"], r2["weights_key"])

    x, y = parts.npz_to_arrays(world["data"].get(world["train"].key))
    seed = first["hyper"]["seed"]

    def plain_fit(order: np.ndarray) -> list[np.ndarray]:
        model = build_model(ModelConfig(**model_dict()), load_weights(world["models"], init_key))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        for round_ in (1, 2):
            model.get_layer("dropout").seed_generator.state.assign([training.dropout_seed(seed, round_, 0), 0])
            chosen = order[(round_ - 1) * 36:round_ * 36]
            model.fit(RECIPE.normalize(x[chosen]), y[chosen], batch_size=12, shuffle=False, verbose=0)
        return model.get_weights()

    def furthest(a: list[np.ndarray], b: list[np.ndarray]) -> float:
        return max(float(np.abs(u - v).max()) for u, v in zip(a, b, strict=True))

    stream = np.concatenate([batches.stream_order(seed, 0, p, len(y)) for p in (0, 1)])
    assert furthest(worker, plain_fit(stream)) < 1e-4
    rounds = np.concatenate([batches.epoch_order(seed, r, 0, 0, len(y)) for r in (1, 2)])
    assert furthest(worker, plain_fit(rounds)) > 1e-2   # each round starting an epoch of its own
    assert furthest(worker, load_weights(world["models"], init_key)) > 1e-3


def test_stream_batches_go_on_across_passes():
    per_pass = [batches.split(batches.stream_order(1, 2, p, 10), 4) for p in range(3)]   # 4 + 4 + 2 each
    flat = [b for p in per_pass for b in p]
    for first, count in ((0, 3), (2, 4), (5, 1), (7, 2)):
        got = batches.stream_batches(1, 2, 10, 4, first, count)
        assert [b.tolist() for b in got] == [b.tolist() for b in flat[first:first + count]]
    # A stream's pass is never an epoch order of a training round (those start at round 1).
    assert not np.array_equal(batches.stream_order(1, 2, 0, 10), batches.epoch_order(1, 1, 2, 0, 10))


def _peaks_in_a_spawned_child(queue) -> None:
    import resource

    queue.put((training._max_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_a_spawned_workers_peak_leaves_out_its_parents_memory():
    import multiprocessing

    ballast = np.ones(1000 * 2 ** 20, np.uint8)   # 1000 MB resident in this (parent) process
    context_ = multiprocessing.get_context("spawn")
    queue = context_.Queue()
    child = context_.Process(target=_peaks_in_a_spawned_child, args=(queue,))
    child.start()
    peak, ru_maxrss = queue.get(timeout=120)
    child.join()
    assert ballast.sum() == ballast.size
    assert ru_maxrss > 1000 > peak   # ru_maxrss counts the parent's pages at the spawn; VmHWM only the child's
