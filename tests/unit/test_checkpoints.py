"""Weights (de)serialisation and the run layout in the model store."""

from __future__ import annotations

import numpy as np
import pytest

from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import DirStore
from dlpipe.train import checkpoints as ck

RECIPE = Recipe(size=32, channels=1, pad=2)
LABELS = ["a", "b", "c"]


def config() -> dict:
    return ck.model_config("1.1", (32, 32, 1), 3, True, LABELS, RECIPE.to_dict())


def test_weights_round_trip_keeps_order_shape_and_dtype():
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5], np.float64), np.zeros((0, 4), np.float32)]
    weights += [np.full(1, i, np.float32) for i in range(12)]  # more than 10: order must not be lexicographic-by-index
    back = ck.weights_from_bytes(ck.weights_to_bytes(weights))
    assert len(back) == len(weights)
    for a, b in zip(weights, back):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def test_unreadable_weights_are_a_clear_error():
    with pytest.raises(ck.CheckpointError, match="'x.npz' is not a readable weights file"):
        ck.weights_from_bytes(b"garbage", what="'x.npz'")
    data = ck.weights_to_bytes([np.ones(3, np.float32)])
    with pytest.raises(ck.CheckpointError, match="not a readable weights file"):
        ck.weights_from_bytes(data[: len(data) // 2])


def test_layout_keys():
    assert ck.config_key("r1") == "runs/r1/config.json"
    assert ck.global_key("r1", 3) == "runs/r1/rounds/0003/global.npz"
    assert ck.worker_key("r1", 3, 7, 1) == "runs/r1/rounds/0003/workers/007-a1.npz"
    assert ck.record_key("r1", 0) == "runs/r1/rounds/0000/record.json"
    assert ck.latest_key("r1") == "runs/r1/latest.json"
    for bad in ("", "../x", "a/b", "-x", "x" * 65):
        with pytest.raises(ValueError, match="run name"):
            ck.run_prefix(bad)


def test_commit_order_and_load_global(tmp_path):
    store = DirStore(tmp_path)
    ck.write_run_config(store, "r", {"model": config(), "dataset": "d"})
    with pytest.raises(ck.CheckpointError, match="no completed round"):
        ck.load_global(store, "r")
    # A round without its weights cannot be committed.
    with pytest.raises(ck.CheckpointError, match="refusing to commit round 0"):
        ck.commit_round(store, "r", 0, {})
    assert ck.latest_round(store, "r") is None
    for r in range(3):
        ck.save_weights(store, ck.global_key("r", r), [np.full(2, r, np.float32)])
        ck.commit_round(store, "r", r, {"note": r})
    # Weights of round 3 written but never committed: a crash mid-commit.
    ck.save_weights(store, ck.global_key("r", 3), [np.full(2, 3, np.float32)])
    assert ck.latest_round(store, "r") == 2
    weights, model = ck.load_global(store, "r")
    assert weights[0].tolist() == [2, 2]
    assert model == config() and set(model) == set(ck.MODEL_CONFIG_FIELDS)
    assert ck.load_global(store, "r", round=1)[0][0].tolist() == [1, 1]
    with pytest.raises(ck.CheckpointError, match="round 3 is not one of them"):
        ck.load_global(store, "r", round=3)
    assert [r["note"] for r in ck.read_records(store, "r")] == [0, 1, 2]
    with pytest.raises(ck.CheckpointError, match="no training run 'other'"):
        ck.load_global(store, "other")


def test_model_config_checks_labels():
    with pytest.raises(ValueError, match="2 labels for 3 classes"):
        ck.model_config("1.1", (32, 32, 1), 3, True, ["a", "b"], RECIPE.to_dict())


def test_runs_from_before_classifier_relu_load_with_the_reference_relu(tmp_path):
    store = DirStore(tmp_path)
    old = {k: v for k, v in config().items() if k != "classifier_relu"}
    ck.write_run_config(store, "old", {"model": old})
    ck.save_weights(store, ck.global_key("old", 0), [np.zeros(1, np.float32)])
    ck.commit_round(store, "old", 0, {})
    assert ck.load_global(store, "old")[1]["classifier_relu"] is True


def test_classifier_relu_is_optional():
    import keras

    x = np.random.default_rng(0).random((4, 32, 32, 1), np.float32)
    for relu in (True, False):
        model = ck.build_model({**config(), "classifier_relu": relu})
        # A positive bias first: with the reference's small conv10 weights the outputs sit near 0.
        model.get_layer("conv10").bias.assign(np.array([-1.0, 0.0, 1.0], np.float32))
        logits = np.asarray(keras.Model(model.input, model.get_layer("conv10").output)(x))
        assert (logits < 0).any() != relu


def test_build_model_sets_the_weights_and_rejects_foreign_ones():
    model = ck.build_model(config())
    weights = [np.full(w.shape, 0.5, np.float32) for w in model.get_weights()]
    again = ck.build_model(config(), weights)
    assert all(np.array_equal(a, b) for a, b in zip(again.get_weights(), weights))
    assert again.input_shape == (None, 32, 32, 1) and again.output_shape == (None, 3)
    with pytest.raises(ck.CheckpointError, match="do not fit"):
        ck.build_model({**config(), "classes": 4, "labels": LABELS + ["d"]}, weights)
