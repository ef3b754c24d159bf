"""The train function's core: its events (pydantic) and what each action does.

Actions, all on the one container-image function:

- ``init``: the round-0 weights, created deterministically from the seed.
- ``warm``: an environment made ready to train (TensorFlow imported, the step traced), beside round 0.
- ``pack``: decode a part of a dataset into a uint8 .npz (see dlpipe.train.parts).
- ``train``: start from the global weights, train on this worker's shard for a few local
  epochs, store the weights; returns the example count and metrics.
- ``evaluate``: loss/accuracy of some weights on validation parts.

Reproducibility: the examples and order of every round come from numpy generators seeded
by (seed, round, worker) (dlpipe.train.batches), and the dropout masks from a seed derived
the same way, so a round gives the same weights whether its worker is cold or warm, first
try or retry.
The Adam state (step count and moments) travels with the weights: workers store theirs and
the orchestrator averages it like the weights, so one worker over R rounds trains like
one long model.fit. A warm worker reuses its compiled model (tracing costs ~5 s): every
call resets the weights, the optimizer's state and the dropout seed, which is exactly
what building a fresh model with the same seed and state would give.

Memory: a worker holds its uint8 shard and normalises one batch at a time (batches.ShardBatches),
so its peak is TensorFlow, the model and a batch's activations, plus one byte per pixel of its
shard: dlpipe.runs.footprint has the measured figures the orchestrator checks before a run.

TensorFlow/Keras are imported inside functions; the event models import without them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dlpipe.shared.memory import peak_rss_mb
from dlpipe.train import parts
from dlpipe.train.model import build_model, weights_misfit
from dlpipe.train.weights import CheckpointError, load_weights, save_weights
from dlpipe.wire import (
    EvaluateRequest,
    EvaluateResponse,
    InitRequest,
    InitResponse,
    ModelConfig,
    PackRequest,
    TrainRequest,
    TrainResponse,
    WarmRequest,
    WarmResponse,
)

# Stop this long before the function's deadline, leaving time to upload the weights.
DEFAULT_MARGIN_S = 20.0

# --- seeds ---------------------------------------------------------------------------

def derived_seed(*parts: int) -> int:
    """A 31-bit seed fixed by integers (seed, round, worker, ...), stable across machines."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def dropout_seed(seed: int, round: int, worker: int) -> int:
    return derived_seed(seed, round, worker, 0xD0)


# --- models -------------------------------------------------------------------------

CLASSIFIER = "conv10"   # the layer a fine-tuning run replaces for new classes, and trains alone


def init_weights(spec: ModelConfig, seed: int, start: Sequence[np.ndarray] | None = None,
                 keep_classifier: bool = True) -> list[np.ndarray]:
    """Initial weights, a function of (spec, seed, start) only.

    start: weights of a servable version to begin from. With keep_classifier False, every
    array but the classifier's comes from it and the classifier is new, drawn from the seed
    (so its size may differ: the dataset's classes, not the version's).
    """
    import keras

    keras.backend.clear_session()
    _MODELS.clear()
    keras.utils.set_random_seed(int(seed))
    model = build_model(spec)
    weights = model.get_weights()
    if start is None:
        return weights
    if len(start) != len(weights):
        raise CheckpointError(f"the starting weights have {len(start)} arrays, the model {len(weights)}")
    for i, variable in enumerate(model.weights):
        if keep_classifier or not variable.path.startswith(f"{CLASSIFIER}/"):
            if tuple(np.shape(start[i])) != tuple(weights[i].shape):
                raise CheckpointError(f"the starting weights' {variable.path} is {np.shape(start[i])}, "
                                      f"the model's {tuple(weights[i].shape)}")
            weights[i] = np.asarray(start[i], weights[i].dtype)
    return weights


# One compiled model per warm worker, keyed by its architecture and what is trainable (the
# learning rate is reset on every call, so it is not part of the key).
_MODELS: dict[tuple, object] = {}


def compiled_model(spec: ModelConfig, trainable: str = "all"):
    """A compiled SqueezeNet for `spec`, reused while the spec stays the same.

    trainable "classifier" freezes every other layer before compiling: Keras then computes
    no gradients for them, and the optimizer holds state for the classifier only.
    """
    import keras

    key = (spec.architecture(), trainable)
    if key not in _MODELS:
        _MODELS.clear()
        keras.backend.clear_session()
        model = build_model(spec, dropout_seed=0)
        if trainable == "classifier":
            for layer in model.layers:
                layer.trainable = layer.name == CLASSIFIER
        model.compile(optimizer=keras.optimizers.Adam(),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.optimizer.build(model.trainable_variables)
        _MODELS[key] = model
    return _MODELS[key]


def _slots(model) -> list:
    """The optimizer's state variables that training carries over: all but the learning rate."""
    optimizer = model.optimizer
    return [v for v in optimizer.variables if v is not optimizer.iterations and v.name != "learning_rate"]


def optimizer_state(model) -> list[np.ndarray]:
    """[step count (float64 scalar), Adam moments...]: floats, so they average like weights."""
    return [np.asarray(int(model.optimizer.iterations.numpy()), np.float64)] + [v.numpy() for v in _slots(model)]


def reset_model(model, weights: Sequence[np.ndarray], learning_rate: float, seed_for_dropout: int,
                state: Sequence[np.ndarray] | None = None) -> None:
    """Put a (possibly used) compiled model in the state of a freshly built one.

    Fresh = built with Dropout(seed=seed_for_dropout), given `weights`, compiled with
    Adam(learning_rate), with the optimizer `state` of `optimizer_state` or, if None, a new
    optimizer's (zero moments, zero steps). Carrying the state matters: a fresh Adam's
    first full-size steps each round can kill SqueezeNet's final ReLUs for good.
    """
    misfit = weights_misfit(model, weights, "global weights")
    if misfit is not None:
        raise misfit
    model.set_weights(list(weights))
    slots = _slots(model)
    if state is None:
        for variable in model.optimizer.variables:
            variable.assign(np.zeros(variable.shape, variable.dtype))
    else:
        if len(state) != len(slots) + 1 or any(tuple(np.shape(a)) != tuple(v.shape)
                                               for a, v in zip(state[1:], slots, strict=True)):
            raise CheckpointError("the optimizer state does not fit the model's optimizer")
        model.optimizer.iterations.assign(round(float(state[0])))
        for variable, value in zip(slots, state[1:], strict=True):
            variable.assign(np.asarray(value, variable.dtype))
    model.optimizer.learning_rate = learning_rate
    for layer in model.layers:
        generator = getattr(layer, "seed_generator", None)
        if generator is not None:
            generator.state.assign(np.asarray([seed_for_dropout, 0], generator.state.dtype))


def _deadline_callback(deadline: float, counter: dict):
    """Stops training between batches when the next batch might not finish in time."""
    import keras

    class Deadline(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.monotonic()

        def on_train_batch_end(self, batch, logs=None):
            now = time.monotonic()
            counter["steps"] += 1
            counter["slowest"] = max(counter["slowest"], now - self._start)
            counter["logs"] = dict(logs or {})
            if now + 1.5 * counter["slowest"] > deadline:
                counter["stopped"] = True
                self.model.stop_training = True

    return Deadline()


def _warmup_callback(base_rate: float, warmup_steps: float, first_step: int):
    """Linear learning-rate warm-up by Adam step, which the carried optimizer state counts across rounds.

    Why: workers that start from the same fresh weights and take full-size steps head for
    different solutions, and their average is worse than any of them (SqueezeNet on
    Fashion-MNIST, 4 workers: 10 % validation accuracy after round 1 at lr 0.002, 68 % with
    a one-epoch warm-up). Small first steps keep them close enough to average.
    """
    import keras

    class Warmup(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.step = first_step

        def on_train_batch_begin(self, batch, logs=None):
            self.step += 1
            if self.step <= warmup_steps + 1:  # once past the warm-up, the rate stays at base_rate
                self.model.optimizer.learning_rate.assign(base_rate * min(1.0, self.step / warmup_steps))

    return Warmup()


def _max_rss_mb() -> float | None:
    """What the function's memory must cover (dlpipe.shared.memory), to a tenth of a MB."""
    peak = peak_rss_mb()
    return round(peak, 1) if peak is not None else None


# --- actions --------------------------------------------------------------------------

def run_init(request: InitRequest, model_store) -> InitResponse:
    start = request.init_from
    weights = init_weights(request.model, request.seed,
                           load_weights(model_store, start.weights_key) if start else None,
                           keep_classifier=start.keep_classifier if start else True)
    size = save_weights(model_store, request.output_key, weights)
    if request.warmup is not None:
        run_warm(WarmRequest(action="warm", model=request.model, warmup=request.warmup))
    return InitResponse(weights_key=request.output_key, arrays=len(weights),
                        parameters=int(sum(w.size for w in weights)), bytes=size)


def run_warm(request: WarmRequest) -> WarmResponse:
    """Compile the model and trace its training step on one batch of zeros; nothing is stored.

    A later train call resets the weights, the optimizer's state and the dropout seed (`reset_model`), so it
    trains exactly as in a cold environment, only without the ~5 s of importing and tracing."""
    from dlpipe.train import batches

    started = time.monotonic()
    spec, warmup = request.model, request.warmup
    was_warm = (spec.architecture(), warmup.trainable) in _MODELS
    model = compiled_model(spec, warmup.trainable)
    x = np.zeros((warmup.batch_size, *spec.input_shape), np.uint8)
    y = np.zeros(warmup.batch_size, np.int32)
    model.fit(batches.ShardBatches(x, y, spec.recipe, [np.arange(warmup.batch_size)]), epochs=1, shuffle=False,
              verbose=0)
    return WarmResponse(seconds=round(time.monotonic() - started, 3), was_warm=was_warm)


def run_pack(request: PackRequest, data_store, remaining_ms: Callable[[], int] | None = None) -> dict:
    """A wire.PackResponse as JSON; NothingPacked if no image of the part decodes."""
    return parts.pack_part(data_store, request.items, request.recipe, request.output_prefix, remaining_ms,
                           shards=request.shards, classes=request.classes).model_dump(mode="json")


def load_shard(data_store, keys: Sequence[str], model: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """A worker's uint8 images and labels, checked against the model before any training."""
    x, y = parts.load_parts(data_store, keys)
    if len(y) == 0:
        raise ValueError(f"shard {list(keys)} holds no images; run `orchestrator prepare` again")
    if tuple(x.shape[1:]) != tuple(model.input_shape):
        raise ValueError(f"shard images are {tuple(x.shape[1:])}, the model expects {tuple(model.input_shape)}; "
                         "prepare the dataset with the run's recipe")
    if int(y.max(initial=0)) >= model.classes or int(y.min(initial=0)) < 0:
        raise ValueError(f"shard labels range {int(y.min())}..{int(y.max())}, the model has {model.classes} classes")
    return x, y


def fit_local_epochs(model, x: np.ndarray, y: np.ndarray, request: TrainRequest, deadline: float) -> dict:
    """Train the round's batches (batches.round_epochs), stopping between batches when the deadline nears."""
    from dlpipe.train import batches

    hyper, recipe, n = request.hyper, request.model.recipe, len(y)
    counter: dict[str, Any] = {"steps": 0, "slowest": 0.0, "stopped": False, "logs": {}}
    callbacks = [_deadline_callback(deadline, counter)]
    if hyper.warmup_epochs > 0:
        first_step = int(model.optimizer.iterations.numpy())  # steps already taken in earlier rounds
        callbacks.append(_warmup_callback(hyper.learning_rate,
                                          hyper.warmup_epochs * batches.steps_per_epoch(n, hyper.batch_size),
                                          first_step))
    done = {"examples": 0, "loss": None, "accuracy": None}
    for index, chosen in enumerate(batches.round_epochs(hyper, request.round, request.worker, n)):
        if index and time.monotonic() + 1.5 * counter["slowest"] > deadline:
            counter["stopped"] = True
            break
        steps_before = counter["steps"]
        # One batch normalised at a time; the weights are those of model.fit on the normalised
        # arrays in this order (up to round-off: see dlpipe.train.batches).
        history = model.fit(batches.ShardBatches(x, y, recipe, chosen), epochs=1, shuffle=False, verbose=0,
                            callbacks=callbacks)
        steps = counter["steps"] - steps_before
        done["examples"] += sum(len(b) for b in chosen[:steps])
        if history.history.get("loss"):
            done["loss"], done["accuracy"] = float(history.history["loss"][-1]), float(history.history["accuracy"][-1])
        if counter["stopped"]:
            break
    if done["examples"] == 0:
        raise TimeoutError("the time budget ended before the first batch; raise --time-budget or the function timeout")
    return {**done, "epochs": batches.pass_ends(hyper, request.round, n, counter["steps"]),
            "steps": counter["steps"], "stopped": bool(counter["stopped"])}


def differences(trained: Sequence[np.ndarray], start: Sequence[np.ndarray]) -> list[np.ndarray]:
    """A worker's round as its weights' differences from the global weights it started from (update_precision
    bfloat16).

    Why differences: a round moves the weights by a small fraction of their size, so 8 bits of mantissa keep
    the difference to within 0.4 % (the pseudo-gradients of DiLoCo survive far coarser quantisation), where
    the weights themselves would lose most of the round's step. Half the bytes to write, and to aggregate.
    """
    return [np.subtract(t, s, dtype=np.asarray(t).dtype) for t, s in zip(trained, start, strict=True)]


def run_train(request: TrainRequest, data_store, model_store,
              remaining_ms: Callable[[], int] | None = None, margin_s: float = DEFAULT_MARGIN_S) -> TrainResponse:
    """One worker's round: returns its example count and metrics (see module docstring)."""
    started = time.monotonic()
    budget = request.time_budget_s if request.time_budget_s is not None else float("inf")
    if remaining_ms is not None:
        budget = min(budget, remaining_ms() / 1000.0 - margin_s)
    hyper = request.hyper
    x, y = load_shard(data_store, request.shard_keys, request.model)
    global_weights = load_weights(model_store, request.global_key)
    state = load_weights(model_store, request.global_optimizer_key) if request.global_optimizer_key else None
    loaded = time.monotonic()

    model = compiled_model(request.model, hyper.trainable)
    reset_model(model, global_weights, hyper.learning_rate, dropout_seed(hyper.seed, request.round, request.worker),
                state)
    built, cpu = time.monotonic(), time.process_time()
    done = fit_local_epochs(model, x, y, request, started + budget)
    trained, cpu = time.monotonic(), time.process_time() - cpu

    delta_from = request.global_key if hyper.update_precision == "bfloat16" else None
    trained_weights = model.get_weights()
    size = save_weights(model_store, request.output_key,
                        trained_weights if delta_from is None else differences(trained_weights, global_weights),
                        hyper.update_precision)
    if request.output_optimizer_key:
        size += save_weights(model_store, request.output_optimizer_key, optimizer_state(model),
                             hyper.optimizer_precision)
    train_s = trained - built
    return TrainResponse(
        run=request.run, round=request.round, worker=request.worker, attempt=request.attempt,
        weights_key=request.output_key, optimizer_key=request.output_optimizer_key, delta_from=delta_from,
        num_examples=int(done["examples"]), shard_examples=len(y), epochs_done=done["epochs"], steps=done["steps"],
        stopped_early=done["stopped"], loss=done["loss"], accuracy=done["accuracy"],
        train_seconds=round(train_s, 3), images_per_second=round(done["examples"] / max(train_s, 1e-9), 1),
        load_seconds=round(loaded - started, 3), setup_seconds=round(built - loaded, 3),
        upload_seconds=round(time.monotonic() - trained, 3), weights_bytes=size, max_rss_mb=_max_rss_mb(),
        train_cpu_seconds=round(cpu, 3))


def run_evaluate(request: EvaluateRequest, data_store, model_store) -> EvaluateResponse:
    """Loss and accuracy of stored weights on validation parts (dropout off), normalised batch by batch."""
    from dlpipe.train import batches

    started = time.monotonic()
    recipe = request.model.recipe
    x, y = parts.load_parts(data_store, request.shard_keys)
    if request.limit is not None and request.limit < len(y):
        step = -(-len(y) // request.limit)   # every step-th image: the same subset every round, all classes
        x, y = x[::step], y[::step]
    weights = load_weights(model_store, request.weights_key)
    model = compiled_model(request.model, request.trainable)
    reset_model(model, weights, 1e-3, 0)
    in_order = batches.split(np.arange(len(y)), request.batch_size)
    loss, accuracy = model.evaluate(batches.ShardBatches(x, y, recipe, in_order), verbose=0)
    return EvaluateResponse(weights_key=request.weights_key, count=len(y), loss=float(loss),
                            accuracy=float(accuracy), seconds=round(time.monotonic() - started, 3))
