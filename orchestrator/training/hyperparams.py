"""A training run's hyper-parameters: the defaults, what a resumed run keeps, what each worker gets.

One model holds them: dlpipe.runs.run.Training, whose field defaults are a new run's defaults.
`orchestrator train` gives the ones on its command line (TrainOptions.hyper, by field name);
the rest come from Training (with FINE_TUNE's for --init-from). The run stores its values when
it starts; `--resume` uses them and refuses others, so new defaults never change a run under way.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from dlpipe.runs.run import Training
from dlpipe.shared.problems import describe_errors
from dlpipe.wire import Hyper

# What a run fixes when it starts: Training's fields but the worker count (which --workers sets).
HYPER_PARAMETERS = tuple(name for name in Training.model_fields if name != "workers")
# A new run's rounds are this share of an epoch of the largest worker shard (stored as local_steps,
# `round_steps`; Training.local_epochs counts whole epochs only), and 1/N of one with N > 4 workers, but
# never fewer than MIN_ROUND_STEPS batches (`default_round_steps`).
ROUND_EPOCHS = 0.25
MIN_ROUND_STEPS = 6
# Runs that start from a pretrained version (--init-from) differ in these (README "Fine-tune on your
# own photos", bench/scaling.py --finetune): whole-epoch rounds of batches of 32 across workers, no
# warm-up, only the classifier trains, plain averaging.
FINE_TUNE: dict[str, Any] = {"local_epochs": 1, "batch_size": 32, "warmup_epochs": 0.0, "trainable": "classifier",
                             "outer_learning_rate": 1.0, "outer_momentum": 0.0}
# Rounds of whole epochs (--local-epochs 1, 2, ...) average plainly unless the outer step is asked for: a few
# long rounds leave its momentum no time to help, and it overshoots (the demo's 5 rounds of 2 epochs on
# 2 workers: 58.6 % after round 1 and 81.7 % after round 5 with it, 74.3 % and 85 % without).
WHOLE_EPOCH_ROUNDS: dict[str, Any] = {"outer_learning_rate": 1.0, "outer_momentum": 0.0}
LR_SCALING = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}   # the learning rate x workers ** this


def new_run_defaults(fine_tune: bool = False) -> dict[str, Any]:
    """Every hyper-parameter of a new run that the command line does not give."""
    values = {name: Training.model_fields[name].default for name in HYPER_PARAMETERS}
    values["local_epochs"] = ROUND_EPOCHS
    return {**values, **(FINE_TUNE if fine_tune else {})}


def default_round_steps(workers: int, shard_images: int, batch_size: int) -> int:
    """A new run's round length in batches: 1/4 epoch, and 1/N for N workers above 4, but at least
    MIN_ROUND_STEPS (or the quarter epoch, if that is shorter).

    More workers drift further apart in the same steps, and averaging them more often held one worker's accuracy
    (README: 24,000 Fashion-MNIST images, 3 epochs: 8 workers 81.0 % at 1/4 epoch, 84.5 % at 1/8; 16 workers
    77.0 %, 81.7 %, 84.0 % at 1/16; one worker 84.9 %). Rounds of 3 batches broke it (6,000 images, 16 workers:
    40.6 %; 70.3 % with rounds of 6, 69.2 % with 12).
    """
    quarter = round_steps(ROUND_EPOCHS, shard_images, batch_size)
    return max(round_steps(min(ROUND_EPOCHS, 1 / workers), shard_images, batch_size), min(MIN_ROUND_STEPS, quarter))


def round_steps(local_epochs: float, shard_images: int, batch_size: int) -> int:
    """Batches in a round of a fraction of an epoch of the largest worker shard (at least one)."""
    return max(1, round(local_epochs * -(-shard_images // batch_size)))


def resolve_hyper(run: str, given: dict[str, Any], stored: Training | None, fine_tune: bool, workers: int,
                  shard_images: int) -> Training:
    """The run's hyper-parameters: the stored ones on resume (none may change), else `given` over the defaults.

    --local-epochs E: whole epochs if E is a whole number, else rounds of E epochs' batches
    (`round_steps`, stored as local_steps). --local-steps K: rounds of K batches.
    """
    unknown = sorted(set(given) - set(HYPER_PARAMETERS))
    if unknown:
        raise ValueError(f"unknown hyper-parameters {unknown}; known: {', '.join(HYPER_PARAMETERS)}")
    try:
        if stored is not None:
            return _resumed(run, given, stored, shard_images)
        values = {**new_run_defaults(fine_tune), **given}
        if values["batch_across_workers"] and values["batch_size"] < workers:
            raise ValueError(f"--batch-size {values['batch_size']} is the batch across workers: it must be at "
                             f"least --workers ({workers}), one example per worker")
        if given.get("local_steps") is not None:
            if given.get("local_epochs") is not None:
                raise ValueError("give --local-epochs (epochs per round) or --local-steps (batches per round), "
                                 "not both")
            values["local_epochs"] = 1       # not used: rounds are local_steps batches
        else:
            batch = values["batch_size"] // workers if values["batch_across_workers"] else values["batch_size"]
            if fine_tune or given.get("local_epochs") is not None:
                values.update(_round_length(values["local_epochs"], shard_images, batch))
            else:
                values.update(local_epochs=1, local_steps=default_round_steps(workers, shard_images, batch))
        if values["local_steps"] is None and not {"outer_learning_rate", "outer_momentum"} & set(given):
            values.update(WHOLE_EPOCH_ROUNDS)
        return Training(**values, workers=workers)
    except ValidationError as err:
        raise ValueError(f"invalid training options: {describe_errors(err)}") from None


def _round_length(local_epochs: float, shard_images: int, batch_size: int) -> dict:
    if not local_epochs > 0:
        raise ValueError(f"--local-epochs must be more than 0, not {local_epochs:g}")
    if float(local_epochs).is_integer():
        return {"local_epochs": int(local_epochs), "local_steps": None}
    return {"local_epochs": 1, "local_steps": round_steps(local_epochs, shard_images, batch_size)}


def _resumed(run: str, given: dict[str, Any], stored: Training, shard_images: int) -> Training:
    """A resumed run's own values; any given value that differs is refused, naming both."""
    local_epochs = given.get("local_epochs")
    if local_epochs is not None:
        asked = _round_length(local_epochs, shard_images, worker_hyper(stored).batch_size)
        if stored.local_steps is None:
            same = asked == {"local_epochs": stored.local_epochs, "local_steps": None}
        else:
            same = asked["local_steps"] == stored.local_steps
        if not same:
            trained = f"local-steps {stored.local_steps}" if stored.local_steps else \
                f"local-epochs {stored.local_epochs}"
            raise ValueError(f"run {run!r} was trained with {trained}; resuming with --local-epochs "
                             f"{local_epochs:g} would not continue the same run. Drop the option or start "
                             "a new --run")
    for name, value in given.items():
        previous = getattr(stored, name)
        if name != "local_epochs" and value is not None and value != previous:
            raise ValueError(f"run {run!r} was trained with {name.replace('_', '-')} {previous}; "
                             f"resuming with {value} would not continue the same run. Drop the option "
                             "or start a new --run")
    return stored


def worker_hyper(training: Training) -> Hyper:
    """What each worker trains with: the run's values, with its share of a batch across workers, or
    with a batch of its own and the learning rate scaled for the global batch (Goyal et al. 2017)."""
    hyper = Hyper(**training.model_dump(include=set(Hyper.model_fields)))
    if training.batch_across_workers:
        return hyper.model_copy(update={"batch_size": max(1, training.batch_size // training.workers)})
    scaled = training.learning_rate * training.workers ** LR_SCALING[training.lr_scaling]
    return hyper.model_copy(update={"learning_rate": min(1.0, scaled)})
