"""Planning a training run before any invocation: its options, the run's config, shards and checks.

Every option is checked against the dataset, the run's own stored config (on --resume) and, for
--init-from, the starting model, so a mistake stops the job before anything is billed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dlpipe.datasets import manifest as manifests
from dlpipe.datasets.manifest import Manifest
from dlpipe.predict.versions import version_key
from dlpipe.runs.pretrained import starting_point
from dlpipe.runs.run import Lineage, RunConfig, Training, TrainingRun
from dlpipe.shared.clock import now_iso
from dlpipe.shared.names import validate_name
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import ObjectStore
from dlpipe.train.model import model_config_for, small_stem
from dlpipe.train.weights import CheckpointError
from dlpipe.wire import (
    InitFrom,
    ModelConfig,
)
from orchestrator.session import Session
from orchestrator.training.capacity import DoesNotFit, cache_note, check_worker_memory, input_shape, worker_shard_sizes
from orchestrator.training.hyperparams import HYPER_PARAMETERS, resolve_hyper, worker_hyper

# --epochs E is done when the rounds have trained at least E x (1 - this) epochs.
EPOCHS_SHORTFALL = 0.01


def _as_json(recipe: Recipe) -> str:
    return json.dumps(recipe.model_dump(mode="json"))


class TrainingFailed(RuntimeError):
    """The run cannot go on; the message says why and what to do. Committed rounds are intact."""


class TrainOptions(BaseModel):
    """One invocation of the job: what to train, for how long, how to run it, and the hyper-parameters given.

    `hyper` holds only the hyper-parameters given (dlpipe.runs.run.Training's field names); the
    rest are Training's defaults for a new run, or the run's own on --resume. They may also be
    passed by name: TrainOptions(dataset=..., run=..., batch_size=64) puts batch_size in `hyper`.
    """

    model_config = ConfigDict(extra="forbid")

    dataset: str
    run: str
    rounds: int | None = None            # train until round R is complete; or give `epochs`
    epochs: float | None = None          # train until this many epochs of data are done (instead of rounds)
    workers: int | None = None           # default: the dataset's shard count
    min_workers: int | None = None       # default: all workers must succeed
    retries: int = 1
    resume: bool = False
    time_budget_s: float | None = None
    version: str | None = None           # None: 1.1, or the --init-from model's
    stem: str | None = None              # auto (None) | small | imagenet; --init-from: the model's
    init_from: str | None = None         # MODEL[:VERSION]: round 0 from a servable version's weights
    classifier_relu: bool = False        # the reference's ReLU after conv10 (see dlpipe.train.model)
    output_dir: Path | None = Path(".")  # local copies of metrics.json and the plot
    keep_worker_weights: bool = False
    aggregate: str = "auto"              # local | lambda | auto: lambda with a Lambda invoker (training.aggregation)
    eval_images: int | None = 2000       # validation images scored every round (a fixed subset); None: all
    full_eval_every: int = 10            # ...and the whole validation set every K rounds and at the end
    hyper: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _hyper_by_name(cls, values: Any) -> Any:
        if isinstance(values, dict):
            given = {k: v for k, v in values.items() if k in HYPER_PARAMETERS and v is not None}
            rest = {k: v for k, v in values.items() if k not in HYPER_PARAMETERS}
            values = {**rest, "hyper": {**rest.get("hyper", {}), **given}}
        return values


@dataclass
class Plan:
    """What every round of this invocation of the job uses."""

    run: TrainingRun
    config: RunConfig
    shard_parts: list[list[str]]
    val_parts: list[str]
    min_workers: int
    eval_batch_size: int = 256           # what fits the function's memory (orchestrator.training.capacity)
    notes: list[str] = field(default_factory=list)   # said before the first round
    rounds: int = 1                      # the round to train up to (--rounds, or from --epochs)
    epochs_per_round: float = 1.0        # epochs of the largest shard a round trains
    train_images: int = 0                # the dataset's training images: epochs = images trained / this
    val_images: int = 0                  # the validation images: a subset of at least as many is all of them

    @property
    def init_from(self) -> InitFrom | None:
        lineage = self.config.init_from
        if lineage is None:
            return None
        return InitFrom(weights_key=version_key(lineage.model, lineage.version, "weights.npz"),
                        keep_classifier=lineage.kept_classifier)


# --- planning --------------------------------------------------------------------------

def read_manifest(data_store: ObjectStore, dataset: str) -> Manifest:
    try:
        return manifests.read_manifest(data_store, dataset)
    except manifests.ManifestError as err:
        raise TrainingFailed(str(err)) from None


def assign_shards(manifest: Manifest, workers: int | None) -> list[list[str]]:
    """Part keys for each worker: shard w, w+W, ... (all of them when W = shard count)."""
    shards = manifest.shards
    workers = workers or len(shards)
    if not 1 <= workers <= len(shards):
        raise TrainingFailed(f"dataset {manifest.dataset!r} was prepared in {len(shards)} shards, so it can feed "
                             f"1 to {len(shards)} workers, not {workers}; run `orchestrator prepare` again with "
                             f"--workers {workers}")
    assigned = [[key for s in shards[w::workers] for key in s.parts] for w in range(workers)]
    empty = [w for w, parts in enumerate(assigned) if not parts]
    if empty:
        raise TrainingFailed(f"workers {empty} would get no data; prepare with more images or fewer workers")
    return assigned


def _check_val_parts(data_store, dataset: str, manifest: Manifest) -> None:
    """The validation parts are there: missing, they would fail the first evaluation, after a round of training."""
    missing = [key for key in manifest.val.parts if not data_store.exists(key)]
    if missing:
        raise TrainingFailed(f"dataset {dataset!r} lacks {len(missing)} of its validation parts ({missing[0]}, ...): "
                             f"prepare it again with `orchestrator prepare ... --dataset {dataset}`")


def _check_options(options: TrainOptions) -> None:
    if (options.rounds is None) == (options.epochs is None):
        raise TrainingFailed("give --rounds R (train until round R) or --epochs E (until E epochs of data), one "
                             "of them")
    if options.rounds is not None and options.rounds < 1:
        raise TrainingFailed("--rounds must be at least 1")
    if options.epochs is not None and not options.epochs > 0:
        raise TrainingFailed(f"--epochs must be more than 0, not {options.epochs:g}")
    if (options.eval_images is not None and options.eval_images < 1) or options.full_eval_every < 1:
        raise TrainingFailed("--eval-images and --full-eval-every must be at least 1")
    if options.retries < 0:
        raise TrainingFailed("--retries must be >= 0")
    try:
        validate_name(options.run, "run name")
        manifests.validate_dataset(options.dataset)
    except ValueError as err:
        raise TrainingFailed(str(err)) from None


def _new_config(options: TrainOptions, manifest: Manifest, training: Training, model_store) -> RunConfig:
    lineage = None
    try:
        if options.init_from:
            model, lineage = _fine_tune_model(options, options.init_from, manifest, model_store)
        else:
            model = model_config_for(manifest.recipe, manifest.classes, options.version or "1.1",
                                     options.stem or "auto", options.classifier_relu)
    except (ValueError, ValidationError) as err:
        raise TrainingFailed(f"cannot build a model for dataset {options.dataset!r}: {err}") from None
    return RunConfig(model=model, dataset=options.dataset, manifest_id=manifest.id,
                     training=training, created=now_iso(),
                     init_from=lineage)


def _val_source(manifest: Manifest) -> str:
    return f" --val-source {manifest.val_source}" if manifest.val_source else ""


def _fine_tune_model(options: TrainOptions, ref: str, manifest: Manifest, model_store) -> tuple[ModelConfig, Lineage]:
    """The starting version's network with the dataset's classes; options that contradict it are refused."""
    try:
        start = starting_point(model_store, ref)
    except CheckpointError as err:
        raise TrainingFailed(str(err)) from None
    source, what = start.config, f"{start.name} {start.version}"
    if options.version not in (None, source.version):
        raise TrainingFailed(f"--version {options.version} conflicts with --init-from {what}, a SqueezeNet "
                             f"{source.version}: drop --version")
    if options.stem is not None:
        raise TrainingFailed(f"--stem conflicts with --init-from: the first convolution comes from {what}; "
                             "drop --stem")
    if manifest.recipe != source.recipe:
        raise TrainingFailed(
            f"dataset {options.dataset!r} was prepared with recipe {_as_json(manifest.recipe)}, but {what} "
            f"expects {_as_json(source.recipe)}; prepare it with the model's own recipe: `orchestrator prepare "
            f"--source {manifest.source or 'PREFIX'} --dataset {options.dataset} --workers "
            f"{len(manifest.shards)}{_val_source(manifest)} --recipe-from {start.name}:{start.version}`")
    labels = list(manifest.classes)
    keep = labels == list(source.labels)
    model = ModelConfig(**{**source.model_dump(), "labels": labels, "classes": len(labels),
                           "classifier_relu": source.classifier_relu if keep else options.classifier_relu})
    return model, Lineage(model=start.name, version=start.version, weights_sha256=start.weights_sha256,
                          kept_classifier=keep)


def _check_resume(options: TrainOptions, run: TrainingRun, config: RunConfig, manifest: Manifest) -> None:
    if not options.resume:
        done = run.latest_round()
        state = "no round completed yet" if done is None else f"last completed round: {done}"
        raise TrainingFailed(f"run {options.run!r} already exists in {run.store.url} ({state}); "
                             "continue it with --resume or choose another --run")
    if options.init_from:
        name, version = options.init_from.partition(":")[::2]
        start = config.init_from
        if start is None or start.model != name or version not in ("", start.version):
            began = f"from {start.model}:{start.version}" if start else "from scratch"
            raise TrainingFailed(f"run {options.run!r} started {began}, not from {options.init_from}; "
                                 "drop --init-from to resume it, or start a new --run")
    if config.dataset != options.dataset:
        raise TrainingFailed(f"run {options.run!r} trains on dataset {config.dataset!r}, not "
                             f"{options.dataset!r}; resume with --dataset {config.dataset}")
    if config.manifest_id != manifest.id:
        raise TrainingFailed(f"dataset {options.dataset!r} was prepared differently after run {options.run!r} started, "
                             "so resuming would train on different shards; start a new --run")


def plan_run(session: Session, options: TrainOptions) -> Plan:
    """Open or start the run, after checking every option against the dataset and the run's own config."""
    _check_options(options)
    run = TrainingRun(session.model_store(), options.run)
    config = run.config()
    if config is None and options.resume:
        runs = sorted({key.split("/")[1] for key in run.store.list("runs/") if key.endswith("/config.json")})
        raise TrainingFailed(f"--resume: there is no run {options.run!r} in {run.store.url} to continue (a misspelt "
                             f"name?); runs there: {', '.join(runs[:20]) or 'none'}. Drop --resume to start it")
    manifest = read_manifest(session.data_store(), options.dataset)
    if config is not None:
        _check_resume(options, run, config, manifest)
    else:   # a resumed run's workers may hold the parts in their shard cache (dlpipe.train.parts)
        _check_val_parts(session.data_store(), options.dataset, manifest)
    stored = config.training if config else None
    workers = options.workers or (stored.workers if stored else None) or len(manifest.shards)
    if stored is not None and stored.workers != workers:
        raise TrainingFailed(f"run {options.run!r} was trained with {stored.workers} workers; "
                             "resume it with the same --workers (or start a new --run)")
    shard_parts, shard_sizes = assign_shards(manifest, workers), worker_shard_sizes(manifest, workers)
    try:
        training = resolve_hyper(options.run, options.hyper, stored, bool(options.init_from), workers,
                                 max(shard_sizes))
    except ValueError as err:
        raise TrainingFailed(str(err)) from None
    min_workers = options.min_workers if options.min_workers is not None else workers
    if not 1 <= min_workers <= workers:
        raise TrainingFailed(f"--min-workers must be between 1 and {workers}, not {min_workers}")
    try:
        eval_batch = check_worker_memory(manifest, training, config.model.small_inputs if config else
                                         small_stem(manifest.recipe.size, options.stem or "auto"))
    except DoesNotFit as err:
        raise TrainingFailed(str(err)) from None
    if config is None:
        config = _new_config(options, manifest, training, run.store)
        run.start(config)
    note = cache_note(input_shape(manifest.recipe), shard_sizes) if not session.data_store().is_local else None
    per_round = epochs_per_round(config.training, max(shard_sizes))
    rounds = options.rounds or rounds_for_epochs(float(options.epochs or 0), per_round)
    return Plan(run, config, shard_parts, list(manifest.val.parts), min_workers, eval_batch,
                [note] if note else [], rounds, per_round, sum(shard_sizes), manifest.val.count)


def rounds_for_epochs(epochs: float, per_round: float) -> int:
    """The rounds that train `epochs` epochs, to within EPOCHS_SHORTFALL of them: rounds of a whole number of
    batches rarely divide an epoch exactly (a quarter of 469 batches is 117), and --epochs 3 should not buy a
    13th round of 0.25 epochs for the 0.005 epochs 12 rounds leave out."""
    return max(1, math.ceil(epochs / per_round * (1 - EPOCHS_SHORTFALL) - 1e-9))


def epochs_per_round(training: Training, shard_images: int) -> float:
    """Epochs of the largest worker shard that one round trains: what --epochs counts rounds with."""
    if training.local_steps is None:
        return float(training.local_epochs)
    return training.local_steps / -(-shard_images // worker_hyper(training).batch_size)
