"""`orchestrator train`: data-parallel SqueezeNet training, one round at a time."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from orchestrator.commands import add_command, require_train_extra
from orchestrator.errors import CommandError
from orchestrator.options import (
    fraction,
    model_ref,
    named,
    non_negative_float,
    non_negative_int,
    output_folder,
    positive_float,
    positive_int,
    retry_count,
    worker_count,
)
from orchestrator.report import add_json_argument, human_out, print_failures, print_json, print_summary
from orchestrator.session import Session
from orchestrator.training.aggregation import ENGINES
from orchestrator.training.hyperparams import HYPER_PARAMETERS, new_run_defaults
from orchestrator.training.loop import TrainingFailed, TrainOptions, TrainResult, run_training

NEW, TUNE = new_run_defaults(), new_run_defaults(fine_tune=True)
EXAMPLES = f"""\
examples:
  orchestrator train --dataset fmnist --run fm1 --epochs 5
      every round: all of the dataset's shards train in parallel (a quarter of an epoch each, by
      default: 20 rounds; 1/N of an epoch with N > 4 workers), then the outer step moves the global
      weights toward their average
  orchestrator train --dataset fmnist --run fm1 --epochs 8 --resume
      continue fm1 from its last completed round until 8 epochs are done (same weights as if never stopped)
  orchestrator train --dataset fmnist --run fm2 --workers 4 --rounds 10 --local-epochs 1 \\
      --min-workers 3 --retries 2
  orchestrator --stack-name dlpipe train --dataset fmnist --run fm3 --rounds 20     # on AWS Lambda
  orchestrator train --dataset flowers --run fl1 --rounds 3 --init-from squeezenet1.1
      fine-tune the pretrained ImageNet SqueezeNet on your classes (a new classifier, the rest frozen)

defaults: --local-epochs {NEW['local_epochs']} (1/N with N > 4 workers),
--batch-size {NEW['batch_size']} across workers, --lr {NEW['learning_rate']} \
(--lr-scaling {NEW['lr_scaling']} with --batch-per-worker),
--warmup-epochs {NEW['warmup_epochs']:g}, --outer-lr {NEW['outer_learning_rate']}, --outer-momentum \
{NEW['outer_momentum']} (rounds of whole epochs: 1 and 0, plain averaging, unless given),
--worker-optimizer {NEW['worker_optimizer']}, --optimizer-precision {NEW['optimizer_precision']},
--update-precision {NEW['update_precision']}, --seed {NEW['seed']}, --trainable all;
with --init-from: --local-epochs {TUNE['local_epochs']}, --batch-size {TUNE['batch_size']}, --warmup-epochs \
{TUNE['warmup_epochs']:g}, --outer-lr \
{TUNE['outer_learning_rate']}, --outer-momentum {TUNE['outer_momentum']}, --trainable {TUNE['trainable']};
with --resume the run's own values. A batch that would not fit the
train function's memory is refused before any work, naming the largest that fits.
Writes runs/RUN/ in the model store (config, per-round global weights and records, metrics.json,
metrics.png) and RUN-metrics.json / RUN-metrics.png under --output. Then:
  orchestrator export --run RUN"""


def register(subparsers) -> None:
    p = add_command(
        subparsers, "train", help="train SqueezeNet data-parallel on a prepared dataset",
        description="Run ROUNDS rounds of data-parallel training: each round every worker (one train function "
                    "invocation) starts from the global weights and trains --local-epochs on its shard; the new "
                    "global weights are the workers' weights averaged by example count, scored on the validation "
                    "set. Failed workers are retried; a round is committed only when complete.",
        examples=EXAMPLES, run=run)
    p.add_argument("--dataset", required=True, type=named, metavar="NAME",
                   help="a dataset made by `orchestrator prepare`")
    p.add_argument("--run", dest="run_name", required=True, type=named, metavar="RUN",
                   help="name of this training run")
    until = p.add_mutually_exclusive_group(required=True)
    until.add_argument("--rounds", type=positive_int, metavar="R", help="train until round R is complete")
    until.add_argument("--epochs", type=positive_float, metavar="E",
                       help="train until E epochs of data are done (to within 1 %%), whatever the round length "
                            "(the rounds that takes; with --resume, E in all)")
    p.add_argument("--workers", type=worker_count, metavar="N",
                   help="parallel workers (default: the dataset's shards)")
    _add_hyper_arguments(p)
    p.add_argument("--seed", type=non_negative_int, metavar="S",
                   help="seed of the initial weights, data order and dropout")
    p.add_argument("--min-workers", type=positive_int, metavar="M",
                   help="close a round if at least M workers succeeded (default: all must)")
    p.add_argument("--retries", type=retry_count, default=1, metavar="K",
                   help="re-invocations of a failed or timed-out worker per round (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue RUN from its last completed round")
    p.add_argument("--time-budget", dest="time_budget_s", type=positive_float, metavar="SEC",
                   help="stop each worker's local training after SEC seconds (default: the function timeout "
                        "minus a margin)")
    p.add_argument("--init-from", type=model_ref, metavar="MODEL[:VERSION]",
                   help="start from a servable model version (from `import-onnx` or `export`; default version: "
                        "its latest) instead of random weights: a new classifier for the dataset's classes "
                        "(kept if the classes are the same); its SqueezeNet version, stem and recipe are used")
    p.add_argument("--trainable", choices=("classifier", "all"),
                   help="what trains: only the classifier (conv10; every other layer frozen, no gradients "
                        "computed: about 4 times faster) or all layers")
    p.add_argument("--stem", choices=("auto", "small", "imagenet"), default=None,
                   help="first convolution: stride 1 for small inputs, ImageNet's stride 2, or auto "
                        "(stride 1 up to 64 px; default)")
    p.add_argument("--version", choices=("1.0", "1.1"), default=None,
                   help="SqueezeNet version (default: 1.1, or the --init-from model's)")
    p.add_argument("--classifier-relu", action="store_true",
                   help="keep the reference SqueezeNet's ReLU after the last convolution (off by default: a class "
                        "whose output it zeroes everywhere can never be learned again)")
    p.add_argument("--output", type=output_folder, default=Path("."), metavar="DIR",
                   help="local folder for RUN-metrics.json and RUN-metrics.png (default: current folder)")
    p.add_argument("--aggregate", choices=ENGINES, default="auto",
                   help="where the workers' results are averaged: here (local: every worker's weights come down "
                        "to this machine), by the train function in the cloud (lambda: a tree of partial sums, "
                        "only small records come down), or auto: lambda with the Lambda invoker (default). "
                        "The weights are the same bytes either way")
    p.add_argument("--eval-images", type=positive_int, default=2000, metavar="N",
                   help="validation images scored after each round: a fixed subset, the same every round "
                        "(default: %(default)s); the whole set every --full-eval-every rounds and at the end")
    p.add_argument("--full-eval-every", type=positive_int, default=10, metavar="K",
                   help="score the whole validation set every K rounds (default: %(default)s)")
    p.add_argument("--keep-worker-weights", action="store_true",
                   help="keep every worker's weights in the store (default: delete once the round is averaged)")
    add_json_argument(p)


def _add_hyper_arguments(p: argparse.ArgumentParser) -> None:
    """The hyper-parameters a new run fixes (and a resumed one keeps): round length, batch, rates, outer step."""
    p.add_argument("--local-epochs", type=positive_float, metavar="E",
                   help="epochs each worker trains per round; a fraction (0.25) makes rounds of that share of an "
                        "epoch, averaging more often")
    p.add_argument("--local-steps", type=positive_int, metavar="K",
                   help="rounds of K batches of each worker's shard instead (its stream of epochs goes on across "
                        "rounds)")
    p.add_argument("--batch-size", type=positive_int, metavar="B",
                   help="each worker's mini-batch (the global batch is N x B), or with --batch-across-workers the "
                        "batch across them (each takes B/N)")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--batch-per-worker", dest="batch_across_workers", action="store_const", const=False,
                       help="--batch-size is each worker's batch: the global batch grows with the workers, and the "
                            "learning rate with it (--lr-scaling)")
    split.add_argument("--batch-across-workers", dest="batch_across_workers", action="store_const", const=True,
                       help="--batch-size is the batch across workers: each of N takes B/N")
    p.add_argument("--lr", dest="learning_rate", type=positive_float, metavar="LR", help="Adam learning rate")
    p.add_argument("--warmup-epochs", type=non_negative_float, metavar="E",
                   help="raise the learning rate linearly from 0 over the first E epochs of each worker's shard. "
                        "Keeps workers close enough early on for their average to be good")
    p.add_argument("--lr-scaling", choices=("none", "sqrt", "linear"),
                   help="with a batch per worker, each worker's learning rate is --lr x 1, sqrt(N) or N")
    p.add_argument("--outer-lr", dest="outer_learning_rate", type=positive_float, metavar="LR",
                   help="outer learning rate at aggregation: the new global weights move this share of the way "
                        "(with momentum, further) from the previous ones to the workers' average; 1 with "
                        "--outer-momentum 0 is plain averaging (FedAvg)")
    p.add_argument("--outer-momentum", type=fraction, metavar="M",
                   help="Nesterov momentum of the outer step (SlowMo, DiLoCo): 0 to below 1")
    p.add_argument("--worker-optimizer", choices=("averaged", "own"),
                   help="each worker's Adam state between rounds: the average of all workers' (then only it and "
                        "the weights are aggregated), or its own, kept in the run (DiLoCo)")
    p.add_argument("--fan-in", type=int, metavar="K",
                   help="aggregation: each node of the tree sums K workers' results (or K nodes' sums); default: "
                        "the K with the least serial work for --workers (up to 8 workers: one node)")
    p.add_argument("--optimizer-precision", choices=("bfloat16", "float32"),
                   help="how the Adam state is stored between rounds: bfloat16 moves half its bytes through the "
                        "store (the workers' reads and writes, the aggregation), float32 keeps it exactly")
    p.add_argument("--update-precision", choices=("bfloat16", "float32"),
                   help="how each worker stores its round: bfloat16 differences from the global weights (half "
                        "the bytes to write and aggregate), or float32 weights, exactly")


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """The job's options from the command line: hyper-parameters by their field names, only those given."""
    given = vars(args)
    job = {name: given[name] for name in TrainOptions.model_fields if name in given and name not in ("run", "hyper")}
    hyper = {name: given[name] for name in HYPER_PARAMETERS if given.get(name) is not None}
    return TrainOptions(**job, run=args.run_name, output_dir=args.output, hyper=hyper)


def run(args: argparse.Namespace, session: Session, out: TextIO | None = None) -> int:
    out = human_out(args, out)  # resolved per call, so redirected output is honoured
    options = options_from_args(args)
    if session.invoker_kind == "local":  # on Lambda the train image has TensorFlow
        require_train_extra("training on this machine", ("tensorflow", "keras"))
    try:
        result = run_training(session, options, out=out)
    except TrainingFailed as err:
        raise CommandError(str(err)) from None
    final = result.final
    val = final.val if final else None
    best = max((r for r in result.records if r.val), key=lambda r: r.val.accuracy or 0.0 if r.val else 0.0,
               default=None)
    trained = sum(r.train.examples for r in result.records[-result.rounds_run:] if r.train) \
        if result.rounds_run else 0
    on_lambda = lambda_seconds_this_time(result)
    rows = [
        ("run", f"{options.run} on {options.dataset}"),
        ("rounds", f"{final.round if final else 0} completed ({result.rounds_run} this time)"),
        ("epochs", f"{final.epochs:.2f} of data" if final and final.epochs is not None else "-"),
        ("workers", f"{final.workers_ok}/{final.workers} in the last round" if final else "-/- in the last round"),
        ("validation", f"loss {val.loss:.4f}, accuracy {val.accuracy:.2%} ({val.count} images)"
         if val else "none (the dataset has no validation images)"),
    ]
    if best is not None and best.val is not None:
        rows.append(("best", f"{best.val.accuracy:.2%} at round {best.round}"))
    rows += [
        ("wall time", f"{result.wall_seconds:.1f} s here; {on_lambda:.1f} s on Lambda (each round's slowest worker, "
                      "aggregation and evaluation)"),
        ("throughput", f"{trained / result.wall_seconds:,.0f} training images/s (all workers)"
         if result.wall_seconds > 0 and trained else "-"),
        ("worker failures", str(len(result.failures))),
    ]
    rows += [(name, f"{path}  (tensorboard --logdir {Path(path).parent})" if name == "tensorboard" and
              Path(path).is_dir() else path) for name, path in result.outputs.items()]
    traffic = session.meter.take()
    print_summary(f"train {options.run}", rows, invocations=result.invocations, out=out, traffic=traffic)
    print_failures(result.failures, out=out)
    if args.json:
        print_json("train", {
            "run": options.run, "dataset": options.dataset, "rounds_completed": final.round if final else 0,
            "rounds_run": result.rounds_run, "workers_ok": final.workers_ok if final else None,
            "workers": final.workers if final else None,
            "validation": val.model_dump(mode="json", exclude_unset=True) if val else None,
            "best": {"round": best.round, **best.val.model_dump(mode="json", exclude_unset=True)}
            if best and best.val else None,
            "training_examples": trained, "wall_seconds": result.wall_seconds, "lambda_seconds": round(on_lambda, 3),
            "epochs": final.epochs if final else None, "worker_failures": len(result.failures),
            "outputs": result.outputs}, result.failures, result.invocations, traffic=traffic)
    print(f"\nnext: orchestrator export --run {options.run}", file=out)
    return 1 if result.failures else 0


def lambda_seconds_this_time(result: TrainResult) -> float:
    """The rounds trained this time on Lambda, one after another (round 0 too for a new run)."""
    if not result.rounds_run or result.final is None:
        return 0.0
    first = result.final.round - result.rounds_run + 1
    return sum(r.lambda_seconds or 0.0 for r in result.records if r.round >= first or (first == 1 and r.round == 0))
