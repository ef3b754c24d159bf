"""A training run in the model store: its keys, its config, its rounds and the commit protocol.

Layout (keys relative to the model store)::

    runs/<run>/config.json                         model config + dataset + hyper-parameters
    runs/<run>/rounds/0000/global.npz              initial weights (round 0, from the seed)
    runs/<run>/rounds/<r>/workers/<w>-a<k>.npz     worker w's weights after round r (attempt k)
    runs/<run>/rounds/<r>/workers/<w>-a<k>.adam.npz   ...and its optimizer state (steps, moments)
    runs/<run>/rounds/<r>/workers/sum-<l>-<n>.npz  partial sums of in-cloud aggregation (and .adam.npz)
    runs/<run>/rounds/<r>/optimizer.npz            example-weighted mean of the workers' optimizer states
    runs/<run>/rounds/<r>/outer.npz                the outer optimizer's momentum (dlpipe.train.outer; not FedAvg)
    runs/<run>/rounds/<r>/states/<w>-a<k>.adam.npz  worker w's own Adam state, when workers keep theirs (the
                                                   last committed round's only)
    runs/<run>/rounds/<r>/global.npz               example-weighted mean of the workers' weights
    runs/<run>/rounds/<r>/record.json              what happened in round r (metrics, failures)
    runs/<run>/latest.json                         {"round": r, ...}: the last COMPLETED round
    runs/<run>/metrics.json, metrics.png           per-round metrics and their plot

A round is committed by writing, in this order, its optimizer state, its outer state, its
global weights, its record and then the latest pointer: a crash at any moment leaves `latest.json` naming
a round whose files are all complete, so resuming from it is always safe.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from dlpipe.runs.record import RoundRecord
from dlpipe.shared.names import validate_name
from dlpipe.shared.store import KeyNotFound
from dlpipe.train.aggregate import FAN_IN, best_fan_in
from dlpipe.train.weights import CheckpointError, load_weights, save_weights
from dlpipe.wire import MAX_AGGREGATE_SOURCES, MAX_BATCH_SIZE, MAX_LOCAL_EPOCHS, Hyper, ModelConfig, Precision

RUNS_PREFIX = "runs"


class Training(Hyper):
    """The run's hyper-parameters, fixed when it starts (`--resume` refuses others).

    The field defaults are the defaults of a new run (README "Data parallelism that pays");
    `orchestrator train` fills the model from its options. A config stored before a field
    existed means what the code did then (`BEFORE`), not today's default.
    """

    workers: int = Field(ge=1)
    batch_size: int = Field(128, ge=1, le=MAX_BATCH_SIZE)
    warmup_epochs: float = Field(1.0, ge=0, le=MAX_LOCAL_EPOCHS)
    # True: batch_size is the batch across workers, each worker taking batch_size // workers.
    # False: every worker takes batch_size, so the global batch grows with the workers.
    batch_across_workers: bool = True
    # With a batch per worker: each worker's learning rate is learning_rate x 1, sqrt(workers) or workers.
    lr_scaling: Literal["none", "sqrt", "linear"] = "sqrt"
    # The outer optimizer at aggregation (dlpipe.train.outer): DiLoCo's Nesterov step; 1 and 0 is FedAvg.
    outer_learning_rate: float = Field(0.7, gt=0, le=10.0)
    outer_momentum: float = Field(0.9, ge=0, lt=1.0)
    # Each worker's Adam state between rounds: the example-weighted average, or its own (DiLoCo; the
    # aggregation then reads a third of the bytes, but 8 workers ended 2 points lower on 24,000 images: README).
    worker_optimizer: Literal["averaged", "own"] = "averaged"
    # Adam's state stored in bfloat16: half the bytes each round's workers and aggregation move (README).
    optimizer_precision: Precision = "bfloat16"
    # Each worker stores its round as bfloat16 differences from the global weights: half the bytes of its
    # weights to write and to aggregate (README).
    update_precision: Precision = "bfloat16"
    # Sources per node of the aggregation tree; None: the one with the least serial work for the workers
    # (dlpipe.train.aggregate.best_fan_in), fixed when the run starts.
    fan_in: int | None = Field(None, ge=2, le=MAX_AGGREGATE_SOURCES)

    @model_validator(mode="before")
    @classmethod
    def _as_it_was(cls, values: Any) -> Any:
        """Fields a stored config lacks keep the meaning they had before they existed."""
        if isinstance(values, dict) and values.get("_stored"):
            values = {**BEFORE, **{k: v for k, v in values.items() if k != "_stored"}}
        return values

    @model_validator(mode="after")
    def _fan_in_for_the_workers(self) -> Training:
        if self.fan_in is None:
            self.fan_in = best_fan_in(self.workers)
        return self

    @property
    def tree_fan_in(self) -> int:
        return self.fan_in if self.fan_in is not None else best_fan_in(self.workers)

    @classmethod
    def stored(cls, values: dict) -> Training:
        """A config's training values as written, whichever version wrote them."""
        return cls.model_validate({**values, "_stored": True})


# What each field meant in runs stored before it existed: the code's behaviour then.
BEFORE = {"batch_size": 128, "warmup_epochs": 0.0, "batch_across_workers": False, "lr_scaling": "none",
          "outer_learning_rate": 1.0, "outer_momentum": 0.0, "worker_optimizer": "averaged",
          "optimizer_precision": "float32", "update_precision": "float32", "fan_in": FAN_IN}


class Lineage(BaseModel):
    """Where a fine-tuned run's round 0 came from: a servable version and a hash of its weights."""

    model: str
    version: str
    weights_sha256: str
    kept_classifier: bool


class RunConfig(BaseModel):
    """runs/<run>/config.json."""

    model_config = {"protected_namespaces": ()}

    model: ModelConfig
    dataset: str
    manifest_id: str | None = None
    training: Training
    created: str

    @field_validator("training", mode="before")
    @classmethod
    def _stored_training(cls, value: Any) -> Any:
        return Training.stored(value) if isinstance(value, dict) else value
    init_from: Lineage | None = None     # None: trained from scratch (round 0 from the seed)


def lineage_of(config: RunConfig) -> dict:
    """What a version exported from this run records about its weights' origin and what was trained."""
    return {"init_from": config.init_from.model_dump() if config.init_from else None,
            "trainable": config.training.trainable}


class TrainingRun:
    """One run's keys, reads and commits in a model store."""

    def __init__(self, store, name: str) -> None:
        self.store = store
        self.name = validate_name(name, "run name")
        self.prefix = f"{RUNS_PREFIX}/{self.name}/"
        self.fence: Callable[[], None] | None = None   # before every commit: raises if this trainer lost the run

    # --- keys ---------------------------------------------------------------------------

    def round_prefix(self, round: int) -> str:
        if round < 0:
            raise ValueError(f"round must be >= 0, got {round}")
        return f"{self.prefix}rounds/{round:04d}/"

    def global_key(self, round: int) -> str:
        return f"{self.round_prefix(round)}global.npz"

    def optimizer_key(self, round: int) -> str:
        return f"{self.round_prefix(round)}optimizer.npz"

    def outer_key(self, round: int) -> str:
        return f"{self.round_prefix(round)}outer.npz"

    def record_key(self, round: int) -> str:
        return f"{self.round_prefix(round)}record.json"

    def worker_key(self, round: int, worker: int, attempt: int = 0) -> str:
        return f"{self.round_prefix(round)}workers/{worker:03d}-a{attempt}.npz"

    def worker_optimizer_key(self, round: int, worker: int, attempt: int = 0) -> str:
        return f"{self.round_prefix(round)}workers/{worker:03d}-a{attempt}.adam.npz"

    def worker_state_key(self, round: int, worker: int, attempt: int = 0) -> str:
        """A worker's own Adam state after `round`, when workers keep theirs (Training.worker_optimizer "own").

        Per attempt, like the weights: a timed-out attempt still running cannot overwrite its retry's state;
        the next round reads the one the round's record names."""
        return f"{self.round_prefix(round)}states/{worker:03d}-a{attempt}.adam.npz"

    def partial_sum_key(self, round: int, level: int, node: int) -> str:
        """A node of the round's aggregation tree below its root: deleted with the workers' results."""
        return f"{self.round_prefix(round)}workers/sum-{level}-{node:04d}.npz"

    def partial_optimizer_key(self, round: int, level: int, node: int) -> str:
        return f"{self.round_prefix(round)}workers/sum-{level}-{node:04d}.adam.npz"

    @property
    def config_key(self) -> str:
        return f"{self.prefix}config.json"

    @property
    def latest_key(self) -> str:
        return f"{self.prefix}latest.json"

    @property
    def metrics_key(self) -> str:
        return f"{self.prefix}metrics.json"

    @property
    def plot_key(self) -> str:
        return f"{self.prefix}metrics.png"

    def url(self, key: str) -> str:
        return f"{self.store.url}/{key}"

    # --- reads --------------------------------------------------------------------------

    def config(self) -> RunConfig | None:
        """The run's config, or None if the run was never started."""
        if not self.store.exists(self.config_key):
            return None
        try:
            return RunConfig.model_validate(self._get_json(self.config_key))
        except ValidationError as err:
            raise self._damaged(self.config_key, f"{err.error_count()} invalid or missing fields") from None

    def latest_round(self) -> int | None:
        """The last completed round, or None if not even round 0 is complete; CheckpointError naming the file
        and the way out if the pointer is damaged or names a round whose files are not all there."""
        if not self.store.exists(self.latest_key):
            return None
        latest = self._get_json(self.latest_key)
        round_ = latest.get("round") if isinstance(latest, dict) else None
        if not isinstance(round_, int) or isinstance(round_, bool) or round_ < 0:
            raise self._damaged(self.latest_key, "it names no round")
        for key in (self.global_key(round_), self.record_key(round_)):
            if not self.store.exists(key):
                raise CheckpointError(f"{self.url(self.latest_key)} names round {round_}, but {key} is missing: "
                                      f"{self._way_out(self.latest_key)}")
        return round_

    def records(self, up_to: int | None = None) -> list[RoundRecord]:
        """Records of rounds 0..up_to (default: the latest completed round), in order."""
        last = self.latest_round() if up_to is None else up_to
        if last is None:
            return []
        return [self._record(r) for r in range(last + 1)]

    def _record(self, round: int) -> RoundRecord:
        key = self.record_key(round)
        record = self._get_json(key)
        try:
            return RoundRecord.model_validate({"round": round, **record})
        except (TypeError, ValidationError) as err:   # TypeError: not an object
            raise self._damaged(key, "not a round record" if isinstance(err, TypeError) else
                                f"{err.error_count()} invalid or missing fields") from None

    def record(self, round: int) -> RoundRecord:
        """The record of a completed round."""
        return self._record(round)

    def load_weights(self, key: str) -> list[np.ndarray]:
        return load_weights(self.store, key)

    def load_global(self, round: int | None = None) -> tuple[list[np.ndarray], ModelConfig]:
        """Global weights of a completed round (default: the latest) and the run's model config."""
        config = self.config()
        if config is None:
            raise CheckpointError(f"no training run {self.name!r} in {self.store.url}; "
                                  "train one with `orchestrator train --run NAME ...`")
        last = self.latest_round()
        if last is None:
            raise CheckpointError(f"run {self.name!r} has no completed round yet; "
                                  "continue it with `orchestrator train --resume`")
        if round is None:
            round = last
        elif not 0 <= round <= last:
            raise CheckpointError(f"run {self.name!r} has completed rounds 0..{last}; round {round} is not one of them")
        return self.load_weights(self.global_key(round)), config.model

    # --- writes -------------------------------------------------------------------------

    def start(self, config: RunConfig) -> None:
        self._put_json(self.config_key, config.model_dump(mode="json"))

    def save_weights(self, key: str, weights: Sequence[np.ndarray], precision: Precision = "float32") -> int:
        return save_weights(self.store, key, weights, precision)

    def commit_round(self, round: int, record: RoundRecord) -> None:
        """Mark `round` complete: its record, then the latest pointer (the commit point).

        The round's global weights must already be stored; this checks, so a bug cannot
        commit a round that has no weights.
        """
        if self.fence is not None:
            self.fence()
        if not self.store.exists(self.global_key(round)):
            raise CheckpointError(f"refusing to commit round {round} of run {self.name!r}: "
                                  f"{self.global_key(round)} is missing")
        self._put_json(self.record_key(round), {**record.to_json(), "round": round})
        self._put_json(self.latest_key, {"round": round, "weights": self.global_key(round),
                                         "record": self.record_key(round)})

    def delete_worker_weights(self, round: int) -> None:
        for key in list(self.store.list(self.round_prefix(round) + "workers/")):
            self.store.delete(key)

    def delete_worker_states(self, round: int) -> None:
        for key in list(self.store.list(self.round_prefix(round) + "states/")):
            self.store.delete(key)

    def put_outputs(self, metrics: bytes, plot: bytes) -> dict[str, str]:
        self.store.put(self.metrics_key, metrics)
        self.store.put(self.plot_key, plot)
        return {"metrics": self.url(self.metrics_key), "plot": self.url(self.plot_key)}

    def _put_json(self, key: str, value: Any) -> None:
        self.store.put(key, json.dumps(value, indent=1, sort_keys=True).encode())

    def _get_json(self, key: str) -> Any:
        """A run's JSON file; CheckpointError naming it and the way out if it is missing or unreadable."""
        try:
            return json.loads(self.store.get(key))
        except KeyNotFound:
            raise CheckpointError(f"{self.url(key)} is missing: {self._way_out(key)}") from None
        except ValueError as err:   # JSONDecodeError, UnicodeDecodeError
            raise self._damaged(key, str(err)) from None

    def _damaged(self, key: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.url(key)} is damaged ({problem}): {self._way_out(key)}")

    def _way_out(self, key: str) -> str:
        if key == self.config_key:
            return f"run {self.name!r} cannot go on without it; start a new --run"
        intact = self._last_intact_round()
        if key == self.latest_key:
            return (f"write {{\"round\": {intact}}} into it to go on from round {intact}, the last with its "
                    "weights and record (then `train --resume`), or start a new --run" if intact is not None else
                    f"no round of run {self.name!r} is intact: start a new --run")
        round_ = int(key[len(self.prefix) + len("rounds/"):].split("/")[0])
        return (f"train again from round {round_ - 1} by writing {{\"round\": {round_ - 1}}} into {self.latest_key} "
                "(then `train --resume`), or start a new --run" if round_ > 0 else "start a new --run")

    def _last_intact_round(self) -> int | None:
        """The last round whose global weights and record are both stored."""
        found: dict[str, set[str]] = {}
        for key in self.store.list(f"{self.prefix}rounds/"):
            folder, _, name = key[len(self.prefix) + len("rounds/"):].partition("/")
            found.setdefault(folder, set()).add(name)
        intact = [int(f) for f, names in found.items() if f.isdigit() and {"global.npz", "record.json"} <= names]
        return max(intact, default=None)
