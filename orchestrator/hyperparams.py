"""A training run's hyper-parameters: the defaults, what a resumed run keeps, what each worker gets.

The run stores its values when it starts (dlpipe.train.run.Training); `--resume` uses them and
refuses others, so new defaults never change a run already under way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from dlpipe.train.run import Training
from dlpipe.wire import Hyper

if TYPE_CHECKING:
    from orchestrator.rounds import TrainOptions

# New runs (bench/train.py, README "More workers at the same number of epochs"): batch_size is
# the batch across workers (each takes batch_size // workers, so an epoch is as many steps at any
# worker count), a one-epoch learning-rate warm-up, and rounds of local_steps batches.
DEFAULTS = {"local_epochs": 1, "local_steps": None, "batch_size": 128, "learning_rate": 1e-3, "seed": 0,
            "warmup_epochs": 1.0, "trainable": "all"}
# Runs that start from a pretrained version (--init-from): measured on flowers12 (README, bench/finetune.py).
FINE_TUNE_DEFAULTS = {**DEFAULTS, "local_epochs": 1, "local_steps": None, "batch_size": 32,
                      "warmup_epochs": 0.0, "trainable": "classifier"}


def resolve_hyper(options: TrainOptions, stored: dict | None, defaults: dict, workers: int) -> Training:
    """The run's hyper-parameters: the stored ones on resume (none may change), else options over defaults."""
    try:
        if stored:
            return Training(**_resumed_values(options, stored))
        values = {name: defaults[name] if getattr(options, name) is None else getattr(options, name)
                  for name in defaults}
        if options.local_epochs is not None:
            if options.local_steps is not None:
                raise ValueError("give --local-epochs (whole epochs per round) or --local-steps (batches per "
                                     "round), not both")
            values["local_steps"] = None     # whole epochs, as asked
        if values["batch_size"] < workers:
            raise ValueError(f"--batch-size {values['batch_size']} is the batch across workers: it must be at "
                                 f"least --workers ({workers}), one example per worker")
        return Training(**values, workers=workers, batch_across_workers=True)
    except ValidationError as err:
        raise ValueError(f"invalid training options: {err.errors()[0]['loc'][0]}: {err.errors()[0]['msg']}") \
            from None


def _resumed_values(options: TrainOptions, stored: dict) -> dict:
    """A resumed run's own values. Fields a run predates keep the meaning they had then (Hyper's defaults)."""
    if options.local_epochs is not None and stored.get("local_steps") is not None:
        raise ValueError(f"run {options.run!r} was trained with local-steps {stored['local_steps']}, not whole "
                             "epochs; drop --local-epochs or start a new --run")
    for name in DEFAULTS:
        given = getattr(options, name)
        previous = stored.get(name, Training.model_fields[name].default)
        if given is not None and given != previous:
            raise ValueError(f"run {options.run!r} was trained with {name.replace('_', '-')} {previous}; "
                                 f"resuming with {given} would not continue the same run. Drop the option "
                                 "or start a new --run")
    return stored


def worker_hyper(training: Training) -> Hyper:
    """What each worker trains with: the run's values, with its share of a batch across workers."""
    hyper = Hyper(**training.model_dump(include=set(Hyper.model_fields)))
    if training.batch_across_workers:
        hyper = hyper.model_copy(update={"batch_size": max(1, training.batch_size // training.workers)})
    return hyper
