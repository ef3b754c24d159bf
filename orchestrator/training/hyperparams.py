"""A training run's hyper-parameters: the defaults, what a resumed run keeps, what each worker gets.

The run stores its values when it starts (dlpipe.runs.run.Training); `--resume` uses them and
refuses others, so new defaults never change a run already under way.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from dlpipe.runs.run import Training
from dlpipe.wire import Hyper

# The options are orchestrator.training.plan.TrainOptions (not imported: the plan imports this module).
TrainOptions = Any

# New runs (bench/train.py; README "More workers at the same number of epochs"): batch_size is
# the batch across workers (each takes batch_size // workers, so an epoch is as many steps at
# any worker count), a one-epoch learning-rate warm-up, and rounds of a quarter of an epoch.
# Measured at --quick sizes, 4 epochs: 4 workers 76.4 % with quarter-epoch rounds, 70.7 % with
# 1-epoch rounds, 57.4 % with the old defaults (batch 128 each, no warm-up, 2-epoch rounds);
# 1 worker 78.6 %. Shorter rounds cost more overhead per epoch (more rounds to evaluate).
DEFAULTS = {"local_epochs": 0.25, "local_steps": None, "batch_size": 128, "learning_rate": 1e-3, "seed": 0,
            "warmup_epochs": 1.0, "trainable": "all", "batch_across_workers": True, "lr_scaling": "none",
            "outer_learning_rate": 1.0, "outer_momentum": 0.0, "worker_optimizer": "averaged"}
# Runs that start from a pretrained version (--init-from): measured on flowers12 (README, bench/finetune.py);
# their batch is across workers too.
FINE_TUNE_DEFAULTS = {**DEFAULTS, "local_epochs": 1, "batch_size": 32, "warmup_epochs": 0.0,
                      "trainable": "classifier"}


def round_steps(local_epochs: float, shard_images: int, batch_size: int) -> int:
    """Batches in a round of a fraction of an epoch of the largest worker shard (at least one)."""
    return max(1, round(local_epochs * -(-shard_images // batch_size)))


def resolve_hyper(options: TrainOptions, stored: dict | None, defaults: dict, workers: int,
                  shard_images: int) -> Training:
    """The run's hyper-parameters: the stored ones on resume (none may change), else options over defaults.

    --local-epochs E: whole epochs if E is a whole number, else rounds of E epochs' batches
    (`round_steps`, stored as local_steps). --local-steps K: rounds of K batches.
    """
    try:
        if stored:
            return Training(**_resumed_values(options, stored, shard_images))
        values = {name: defaults[name] if getattr(options, name) is None else getattr(options, name)
                  for name in defaults}
        if values["batch_across_workers"] and values["batch_size"] < workers:
            raise ValueError(f"--batch-size {values['batch_size']} is the batch across workers: it must be at "
                             f"least --workers ({workers}), one example per worker")
        if options.local_steps is not None:
            if options.local_epochs is not None:
                raise ValueError("give --local-epochs (epochs per round) or --local-steps (batches per round), "
                                 "not both")
            values["local_epochs"] = 1       # not used: rounds are local_steps batches
        else:
            batch = values["batch_size"] // workers if values["batch_across_workers"] else values["batch_size"]
            values.update(_round_length(values["local_epochs"], shard_images, batch))
        return Training(**values, workers=workers)
    except ValidationError as err:
        raise ValueError(f"invalid training options: {err.errors()[0]['loc'][0]}: {err.errors()[0]['msg']}") \
            from None


def _round_length(local_epochs: float, shard_images: int, batch_size: int) -> dict:
    if not local_epochs > 0:
        raise ValueError(f"--local-epochs must be more than 0, not {local_epochs:g}")
    if float(local_epochs).is_integer():
        return {"local_epochs": int(local_epochs), "local_steps": None}
    return {"local_epochs": 1, "local_steps": round_steps(local_epochs, shard_images, batch_size)}


def _resumed_values(options: TrainOptions, stored: dict, shard_images: int) -> dict:
    """A resumed run's own values. Fields a run predates keep the meaning they had then (Hyper's defaults)."""
    steps = stored.get("local_steps")
    if options.local_epochs is not None:
        batch = worker_hyper(Training(**stored)).batch_size
        asked = _round_length(options.local_epochs, shard_images, batch)
        if steps is None:
            same = asked == {"local_epochs": stored.get("local_epochs"), "local_steps": None}
        else:
            same = asked["local_steps"] == steps
        if not same:
            trained = f"local-steps {steps}" if steps else f"local-epochs {stored.get('local_epochs')}"
            raise ValueError(f"run {options.run!r} was trained with {trained}; resuming with --local-epochs "
                             f"{options.local_epochs:g} would not continue the same run. Drop the option or start "
                             "a new --run")
    for name in DEFAULTS:
        given = getattr(options, name)
        previous = stored.get(name, Training.model_fields[name].default)
        if name != "local_epochs" and given is not None and given != previous:
            raise ValueError(f"run {options.run!r} was trained with {name.replace('_', '-')} {previous}; "
                             f"resuming with {given} would not continue the same run. Drop the option "
                             "or start a new --run")
    return stored


LR_SCALING = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}   # the learning rate x workers ** this


def worker_hyper(training: Training) -> Hyper:
    """What each worker trains with: the run's values, with its share of a batch across workers, or
    with a batch of its own and the learning rate scaled for the global batch (Goyal et al. 2017)."""
    hyper = Hyper(**training.model_dump(include=set(Hyper.model_fields)))
    if training.batch_across_workers:
        return hyper.model_copy(update={"batch_size": max(1, training.batch_size // training.workers)})
    scaled = training.learning_rate * training.workers ** LR_SCALING[training.lr_scaling]
    return hyper.model_copy(update={"learning_rate": min(1.0, scaled)})
