"""Weights (de)serialisation, the run layout in the model store, and the model builder."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from dlpipe.runs.record import RoundRecord
from dlpipe.runs.run import RunConfig, Training, TrainingRun
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import DirStore
from dlpipe.train.model import build_model, model_config_for
from dlpipe.train.weights import CheckpointError, save_weights, weights_from_bytes, weights_to_bytes
from dlpipe.wire import ModelConfig

RECIPE = Recipe(size=32, channels=1, pad=2)
LABELS = ["a", "b", "c"]


def config(**changes) -> ModelConfig:
    return ModelConfig(**{"version": "1.1", "input_shape": (32, 32, 1), "classes": 3, "small_inputs": True,
                          "labels": LABELS, "recipe": json.loads(json.dumps(RECIPE.to_dict())), **changes})


def run_config(**changes) -> RunConfig:
    return RunConfig(model=config(**changes), dataset="d", training=Training(workers=1), created="now")


def test_weights_round_trip_keeps_order_shape_and_dtype():
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5], np.float64), np.zeros((0, 4), np.float32)]
    weights += [np.full(1, i, np.float32) for i in range(12)]  # more than 10: order must not be lexicographic-by-index
    back = weights_from_bytes(weights_to_bytes(weights))
    assert len(back) == len(weights)
    for a, b in zip(weights, back, strict=False):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def test_bfloat16_keeps_float32_arrays_to_8_bits_rounding_to_nearest_even_and_everything_else_exactly():
    ulp = 2.0 ** -7   # of bfloat16 at 1
    moments = np.array([1.0, 1 + ulp / 2, 1 + 3 * ulp / 2, 1 + ulp / 2 + 2 ** -20, -3e-12, 6e37, 0.0], np.float32)
    step, weights = np.asarray(1234.0, np.float64), np.linspace(-1, 1, 7, dtype=np.float32)
    half = weights_from_bytes(weights_to_bytes([step, moments, np.float32(0.1), weights[:0]], "bfloat16"))
    assert half[0] == 1234.0 and half[0].dtype == np.float64     # the step count: not a float32 array
    assert half[2] == np.float32(0.1) and half[3].shape == (0,)  # a float32 scalar stays as it is
    assert half[1].dtype == np.float32
    # ties go to the even mantissa (1, then 1 + 2 ulp); above a tie, up; tiny and huge keep their range
    assert half[1][:4].tolist() == [1.0, 1.0, 1 + 2 * ulp, 1 + ulp]
    np.testing.assert_allclose(half[1], moments, rtol=2 ** -8)   # half an ulp at most
    full = weights_to_bytes([step, moments])
    assert len(weights_to_bytes([step, weights.repeat(1000)], "bfloat16")) < 0.6 * len(
        weights_to_bytes([step, weights.repeat(1000)]))
    assert weights_from_bytes(full)[1].tobytes() == moments.tobytes()


def test_unreadable_weights_are_a_clear_error():
    with pytest.raises(CheckpointError, match=r"'x.npz' is not a readable weights file"):
        weights_from_bytes(b"garbage", what="'x.npz'")
    data = weights_to_bytes([np.ones(3, np.float32)])
    with pytest.raises(CheckpointError, match="not a readable weights file"):
        weights_from_bytes(data[: len(data) // 2])
    buffer = io.BytesIO()
    np.savez(buffer, w0000=np.ones(2, np.float32), b0002=np.ones(2, np.uint16))   # array 1 missing
    with pytest.raises(CheckpointError, match="unexpected arrays"):
        weights_from_bytes(buffer.getvalue())


def test_layout_keys():
    run = TrainingRun(None, "r1")
    assert run.config_key == "runs/r1/config.json"
    assert run.global_key(3) == "runs/r1/rounds/0003/global.npz"
    assert run.worker_key(3, 7, 1) == "runs/r1/rounds/0003/workers/007-a1.npz"
    assert run.record_key(0) == "runs/r1/rounds/0000/record.json"
    assert run.latest_key == "runs/r1/latest.json"
    for bad in ("", "../x", "a/b", "-x", "x" * 65):
        with pytest.raises(ValueError, match="run name"):
            TrainingRun(None, bad)


def test_commit_order_and_load_global(tmp_path):
    run = TrainingRun(DirStore(tmp_path), "r")
    run.start(run_config())
    with pytest.raises(CheckpointError, match="no completed round"):
        run.load_global()
    # A round without its weights cannot be committed.
    with pytest.raises(CheckpointError, match="refusing to commit round 0"):
        run.commit_round(0, RoundRecord(kind="init", workers=0, workers_ok=0, wall_seconds=0.0, gb_seconds=0.0))
    assert run.latest_round() is None
    for r in range(3):
        run.save_weights(run.global_key(r), [np.full(2, r, np.float32)])
        run.commit_round(r, RoundRecord(workers=1, workers_ok=1, wall_seconds=0.0, gb_seconds=0.0, note=r))
    # Weights of round 3 written but never committed: a crash mid-commit.
    run.save_weights(run.global_key(3), [np.full(2, 3, np.float32)])
    assert run.latest_round() == 2
    weights, model = run.load_global()
    assert weights[0].tolist() == [2, 2]
    assert model == config()
    assert run.load_global(round=1)[0][0].tolist() == [1, 1]
    with pytest.raises(CheckpointError, match="round 3 is not one of them"):
        run.load_global(round=3)
    assert [(r.round, r.note) for r in run.records()] == [(0, 0), (1, 1), (2, 2)]
    with pytest.raises(CheckpointError, match="no training run 'other'"):
        TrainingRun(run.store, "other").load_global()


def test_model_config_checks_labels():
    with pytest.raises(ValueError, match="2 labels for 3 classes"):
        config(labels=["a", "b"])


def test_model_config_for_a_dataset_picks_the_stem_by_size():
    assert model_config_for(RECIPE, LABELS).small_inputs is True
    big = model_config_for(Recipe(size=224), LABELS)
    assert big.small_inputs is False and big.input_shape == (224, 224, 3) and big.classes == 3
    assert model_config_for(Recipe(size=224), LABELS, stem="small").small_inputs is True
    with pytest.raises(ValueError, match="stem must be one of"):
        model_config_for(RECIPE, LABELS, stem="huge")


def test_runs_from_before_classifier_relu_load_with_the_reference_relu(tmp_path):
    store = DirStore(tmp_path)
    run = TrainingRun(store, "old")
    stored = run_config().model_dump(mode="json")
    del stored["model"]["classifier_relu"]
    store.put(run.config_key, json.dumps(stored).encode())
    save_weights(store, run.global_key(0), [np.zeros(1, np.float32)])
    run.commit_round(0, RoundRecord(kind="init", workers=0, workers_ok=0, wall_seconds=0.0, gb_seconds=0.0))
    assert run.load_global()[1].classifier_relu is True


def test_classifier_relu_is_optional():
    import keras

    x = np.random.default_rng(0).random((4, 32, 32, 1), np.float32)
    for relu in (True, False):
        model = build_model(config(classifier_relu=relu))
        # A positive bias first: with the reference's small conv10 weights the outputs sit near 0.
        model.get_layer("conv10").bias.assign(np.array([-1.0, 0.0, 1.0], np.float32))
        logits = np.asarray(keras.Model(model.input, model.get_layer("conv10").output)(x))
        assert (logits < 0).any() != relu


def test_build_model_sets_the_weights_and_rejects_foreign_ones():
    model = build_model(config())
    weights = [np.full(w.shape, 0.5, np.float32) for w in model.get_weights()]
    again = build_model(config(), weights)
    assert all(np.array_equal(a, b) for a, b in zip(again.get_weights(), weights, strict=False))
    assert again.input_shape == (None, 32, 32, 1) and again.output_shape == (None, 3)
    with pytest.raises(CheckpointError, match="do not fit"):
        build_model(config(classes=4, labels=LABELS + ["d"]), weights)
