"""Training runs in the model store: weights (de)serialisation and the checkpoint layout.

Layout of a run (all keys relative to the model store)::

    runs/<run>/config.json                         model config + dataset + hyper-parameters
    runs/<run>/rounds/0000/global.npz              initial weights (round 0, from the seed)
    runs/<run>/rounds/0000/record.json
    runs/<run>/rounds/<r>/workers/<w>-a<k>.npz     worker w's weights after round r (attempt k)
    runs/<run>/rounds/<r>/workers/<w>-a<k>.adam.npz   ...and its optimizer state (steps, moments)
    runs/<run>/rounds/<r>/optimizer.npz            example-weighted mean of the workers' optimizer states
    runs/<run>/rounds/<r>/global.npz               example-weighted mean of the workers' weights
    runs/<run>/rounds/<r>/record.json              what happened in round r (metrics, failures)
    runs/<run>/latest.json                         {"round": r, ...}: the last COMPLETED round
    runs/<run>/metrics.json, metrics.png           per-round metrics and their plot

A round is committed by writing, in this order, its optimizer state, its global weights,
its record and then the latest pointer: a crash at any moment leaves `latest.json` naming
a round whose files are all complete, so resuming from it is always safe.

Weights are a list of arrays in `model.get_weights()` order, stored as an .npz (no
pickle) so the orchestrator and other tools read them with numpy alone.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any, Sequence

import numpy as np

from dlpipe.shared.names import validate_name

RUNS_PREFIX = "runs"
MODEL_CONFIG_FIELDS = ("version", "input_shape", "classes", "small_inputs", "labels", "recipe", "classifier_relu")
# Fields added later, with the value that configs written before them mean.
MODEL_CONFIG_DEFAULTS = {"classifier_relu": True}


class CheckpointError(RuntimeError):
    """A run or round that is missing or unreadable; the message says what to do."""


def validate_run(run: str) -> str:
    return validate_name(run, "run name")


def run_prefix(run: str) -> str:
    return f"{RUNS_PREFIX}/{validate_run(run)}/"


def config_key(run: str) -> str:
    return f"{run_prefix(run)}config.json"


def round_prefix(run: str, round: int) -> str:
    if round < 0:
        raise ValueError(f"round must be >= 0, got {round}")
    return f"{run_prefix(run)}rounds/{round:04d}/"


def global_key(run: str, round: int) -> str:
    return f"{round_prefix(run, round)}global.npz"


def worker_key(run: str, round: int, worker: int, attempt: int = 0) -> str:
    return f"{round_prefix(run, round)}workers/{worker:03d}-a{attempt}.npz"


def worker_optimizer_key(run: str, round: int, worker: int, attempt: int = 0) -> str:
    return f"{round_prefix(run, round)}workers/{worker:03d}-a{attempt}.adam.npz"


def optimizer_key(run: str, round: int) -> str:
    return f"{round_prefix(run, round)}optimizer.npz"


def record_key(run: str, round: int) -> str:
    return f"{round_prefix(run, round)}record.json"


def latest_key(run: str) -> str:
    return f"{run_prefix(run)}latest.json"


def metrics_key(run: str) -> str:
    return f"{run_prefix(run)}metrics.json"


def plot_key(run: str) -> str:
    return f"{run_prefix(run)}metrics.png"


# --- weights -----------------------------------------------------------------------

def weights_to_bytes(weights: Sequence[np.ndarray]) -> bytes:
    """Serialise a list of arrays (order kept) as .npz bytes."""
    buffer = io.BytesIO()
    np.savez(buffer, **{f"w{i:04d}": np.asarray(w) for i, w in enumerate(weights)})
    return buffer.getvalue()


def weights_from_bytes(data: bytes, what: str = "weights") -> list[np.ndarray]:
    """The inverse of `weights_to_bytes`; a clear error if the bytes are not such a file."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            names = sorted(archive.files)
            if not names or any(not re.fullmatch(r"w\d{4}", n) for n in names):
                raise ValueError(f"unexpected arrays {names[:5]}")
            return [archive[name] for name in names]
    except Exception as err:
        raise CheckpointError(f"{what} is not a readable weights file ({type(err).__name__}: {err})") from err


def save_weights(store, key: str, weights: Sequence[np.ndarray]) -> int:
    data = weights_to_bytes(weights)
    store.put(key, data)
    return len(data)


def load_weights(store, key: str) -> list[np.ndarray]:
    return weights_from_bytes(store.get(key), what=f"{key!r} in {store.url}")


# --- run config, records and the latest pointer ------------------------------------

def model_config(version: str, input_shape: Sequence[int], classes: int, small_inputs: bool,
                 labels: Sequence[str], recipe: dict, classifier_relu: bool = True) -> dict:
    """The model config that export/serving needs to rebuild and feed the model."""
    if len(labels) != classes:
        raise ValueError(f"{len(labels)} labels for {classes} classes")
    return {"version": version, "input_shape": [int(v) for v in input_shape], "classes": int(classes),
            "small_inputs": bool(small_inputs), "labels": list(labels),
            "recipe": json.loads(json.dumps(dict(recipe))),  # as it reads back from JSON (lists, not tuples)
            "classifier_relu": bool(classifier_relu)}


def put_json(store, key: str, value: Any) -> None:
    store.put(key, json.dumps(value, indent=1, sort_keys=True).encode())


def get_json(store, key: str) -> Any:
    return json.loads(store.get(key))


def write_run_config(store, run: str, config: dict) -> None:
    put_json(store, config_key(run), config)


def read_run_config(store, run: str) -> dict | None:
    """The run's config.json, or None if the run was never started."""
    if not store.exists(config_key(run)):
        return None
    return get_json(store, config_key(run))


def latest_round(store, run: str) -> int | None:
    """The last completed round of `run`, or None if not even round 0 is complete."""
    key = latest_key(run)
    if not store.exists(key):
        return None
    return int(get_json(store, key)["round"])


def commit_round(store, run: str, round: int, record: dict) -> None:
    """Mark `round` complete: its record, then the latest pointer (the commit point).

    The round's global weights must already be stored; this checks so a bug cannot commit
    a round that has no weights.
    """
    if not store.exists(global_key(run, round)):
        raise CheckpointError(f"refusing to commit round {round} of run {run!r}: {global_key(run, round)} is missing")
    put_json(store, record_key(run, round), {**record, "round": round})
    put_json(store, latest_key(run), {"round": round, "weights": global_key(run, round),
                                      "record": record_key(run, round)})


def read_records(store, run: str, up_to: int | None = None) -> list[dict]:
    """Records of rounds 0..up_to (default: the latest completed round), in order."""
    last = latest_round(store, run) if up_to is None else up_to
    if last is None:
        return []
    return [get_json(store, record_key(run, r)) for r in range(last + 1)]


def load_global(model_store, run: str, round: int | None = None) -> tuple[list[np.ndarray], dict]:
    """Global weights of a completed round (default: the latest) and the run's model config.

    The config is {"version", "input_shape", "classes", "small_inputs", "labels", "recipe",
    "classifier_relu"}: everything `build_model` and a serving path need.
    """
    config = read_run_config(model_store, run)
    if config is None:
        raise CheckpointError(f"no training run {run!r} in {model_store.url}; "
                              "train one with `orchestrator train --run NAME ...`")
    last = latest_round(model_store, run)
    if last is None:
        raise CheckpointError(f"run {run!r} has no completed round yet; continue it with `orchestrator train --resume`")
    if round is None:
        round = last
    elif not 0 <= round <= last:
        raise CheckpointError(f"run {run!r} has completed rounds 0..{last}; round {round} is not one of them")
    weights = load_weights(model_store, global_key(run, round))
    stored = config["model"]
    return weights, {name: stored[name] if name in stored else MODEL_CONFIG_DEFAULTS[name]
                     for name in MODEL_CONFIG_FIELDS}


def build_model(config: dict, weights: Sequence[np.ndarray] | None = None, dropout_seed: int | None = None):
    """The Keras SqueezeNet described by a model config, with `weights` set if given.

    TensorFlow/Keras is imported here, not at module level: zip functions import this
    module's helpers without loading TensorFlow.
    """
    from dlpipe.train.model import squeezenet

    model = squeezenet(config["version"], tuple(config["input_shape"]), int(config["classes"]),
                       small_inputs=bool(config["small_inputs"]), dropout_seed=dropout_seed,
                       classifier_relu=bool(config.get("classifier_relu", MODEL_CONFIG_DEFAULTS["classifier_relu"])))
    if weights is not None:
        expected = [tuple(w.shape) for w in model.weights]
        got = [tuple(np.shape(w)) for w in weights]
        if expected != got:
            first = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(got), len(expected)))
            raise CheckpointError(f"weights do not fit the model: {len(got)} arrays for {len(expected)}, "
                                  f"first mismatch at array {first}")
        model.set_weights(list(weights))
    return model
