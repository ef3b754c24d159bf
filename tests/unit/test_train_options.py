"""`orchestrator train`'s options: one hyper-parameter model (Training) whose defaults are a new run's."""

from __future__ import annotations

import argparse

import pytest

from dlpipe.runs.run import BEFORE, RunConfig, Training
from orchestrator.commands import train as train_command
from orchestrator.training.hyperparams import HYPER_PARAMETERS, new_run_defaults, resolve_hyper
from orchestrator.training.plan import TrainOptions


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    return parser.parse_args(["train", "--dataset", "d", "--run", "r", *argv])


def test_argparse_fills_the_model_by_field_name_with_only_what_was_given():
    options = train_command.options_from_args(parse("--epochs", "3", "--lr", "0.002", "--batch-per-worker",
                                                    "--outer-momentum", "0.5", "--workers", "4"))
    assert options.hyper == {"learning_rate": 0.002, "batch_across_workers": False, "outer_momentum": 0.5}
    assert (options.epochs, options.rounds, options.workers, options.eval_images) == (3.0, None, 4, 2000)
    assert train_command.options_from_args(parse("--rounds", "2")).hyper == {}


def test_every_hyper_parameter_has_an_option():
    args = vars(parse("--rounds", "1"))
    assert set(HYPER_PARAMETERS) <= set(args)


def test_hyper_parameters_may_be_given_by_name_in_python():
    options = TrainOptions(dataset="d", run="r", rounds=1, batch_size=64, outer_learning_rate=1.0, seed=None)
    assert options.hyper == {"batch_size": 64, "outer_learning_rate": 1.0}
    with pytest.raises(ValueError, match="nonsense"):
        TrainOptions(dataset="d", run="r", rounds=1, nonsense=3)


def test_the_models_defaults_are_the_defaults_and_stored_configs_keep_their_meaning():
    defaults = new_run_defaults()
    assert all(defaults[name] == Training.model_fields[name].default for name in HYPER_PARAMETERS
               if name != "local_epochs")
    assert defaults["local_epochs"] == 0.25 and new_run_defaults(fine_tune=True)["trainable"] == "classifier"
    old = {"local_epochs": 2, "batch_size": 128, "learning_rate": 0.001, "seed": 0, "trainable": "all", "workers": 3}
    stored = RunConfig.model_validate({"model": {"input_shape": [32, 32, 1], "classes": 2, "labels": ["a", "b"],
                                                 "recipe": {"size": 32, "channels": 1}},
                                       "dataset": "d", "training": old, "created": "now"}).training
    assert all(getattr(stored, name) == value for name, value in BEFORE.items() if name not in old)
    assert (stored.outer_learning_rate, stored.outer_momentum, stored.batch_across_workers) == (1.0, 0.0, False)
    assert (defaults["optimizer_precision"], stored.optimizer_precision) == ("bfloat16", "float32")
    assert (defaults["update_precision"], stored.update_precision) == ("bfloat16", "float32")
    # the aggregation tree: chosen for the workers when a run starts, 16 per node in runs stored before
    assert (Training(workers=8).fan_in, Training(workers=16).fan_in, stored.fan_in) == (16, 4, 16)


@pytest.mark.parametrize(("given", "outer"), [
    ({}, (0.7, 0.9)),                                            # rounds of a quarter epoch: the outer step
    ({"local_epochs": 0.5}, (0.7, 0.9)),
    ({"local_steps": 40}, (0.7, 0.9)),
    ({"local_epochs": 2}, (1.0, 0.0)),                           # whole epochs: plain averaging...
    ({"local_epochs": 2, "outer_momentum": 0.5}, (0.7, 0.5)),    # ...unless the outer step is asked for
    ({"local_epochs": 1, "outer_learning_rate": 0.8}, (0.8, 0.9)),
])
def test_rounds_of_whole_epochs_average_plainly_unless_the_outer_step_is_given(given, outer):
    training = resolve_hyper("r", given, None, fine_tune=False, workers=2, shard_images=1000)
    assert (training.outer_learning_rate, training.outer_momentum) == outer


@pytest.mark.parametrize(("workers", "given", "steps"), [
    (1, {}, 47),                  # 24,000 images: 188 batches of 128 an epoch, a quarter of them
    (4, {}, 47),                  # 6,000 a shard, batches of 32: the same 188 an epoch, a quarter
    (8, {}, 24),                  # 1/8 of 188 (23.5)
    (16, {}, 12),                 # 1/16 of 188
    (8, {"local_epochs": 0.5}, 94),
])
def test_rounds_are_a_quarter_epoch_up_to_4_workers_and_1_over_n_above(workers, given, steps):
    training = resolve_hyper("r", given, None, fine_tune=False, workers=workers, shard_images=24000 // workers)
    assert training.local_steps == steps
    tuned = resolve_hyper("r", {}, None, fine_tune=True, workers=workers, shard_images=1000)
    assert (tuned.local_epochs, tuned.local_steps) == (1, None)    # fine-tuning: whole epochs, as before


def test_rounds_of_1_over_n_are_never_shorter_than_6_batches():
    # 6,000 images on 16 workers: 375 a shard, batches of 8, 47 an epoch; 1/16 would be 3 batches
    assert resolve_hyper("r", {}, None, fine_tune=False, workers=16, shard_images=375).local_steps == 6
    # ...unless the quarter epoch itself is shorter, or the user asks
    assert resolve_hyper("r", {}, None, fine_tune=False, workers=2, shard_images=100).local_steps == 1
    assert resolve_hyper("r", {"local_epochs": 0.0625}, None, fine_tune=False, workers=16,
                         shard_images=375).local_steps == 3
