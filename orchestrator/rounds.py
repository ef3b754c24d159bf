"""The round loop of data-parallel training: orchestration only, no ML.

Each round: every worker (a train function invocation) starts from the global weights and
trains on its shard; failed workers are retried; the new global weights (and Adam state)
are the example-weighted mean of the workers' (dlpipe.train.averaging, in worker order, one
worker in memory at a time); the evaluate action scores them on the validation parts; then
the round is committed (dlpipe.train.run: optimizer state, weights, record, latest pointer,
in that order). Everything a worker does is a function of (seed, round, worker), so a
resumed run ends with the same weights as an uninterrupted one.

`run_training(session, options)` is the whole job, callable without the CLI (the demo
chains it after `prepare`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from dlpipe.predict.versions import version_key
from dlpipe.shared.clock import now_iso
from dlpipe.shared.names import validate_name
from dlpipe.shared.recipe import Recipe
from dlpipe.train import manifest as manifests
from dlpipe.train.averaging import weighted_metrics
from dlpipe.train.model import model_config_for
from dlpipe.train.pretrained import starting_point
from dlpipe.train.run import Lineage, RunConfig, Training, TrainingRun
from dlpipe.train.weights import CheckpointError
from dlpipe.wire import (
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    InitFrom,
    InitRequest,
    InitResponse,
    ModelConfig,
    TrainRequest,
    TrainResponse,
    parse_reply,
)
from orchestrator.aggregation import AggregationFailed, aggregate_round, resolve_engine
from orchestrator.capacity import DoesNotFit, cache_note, check_worker_memory, input_shape, worker_shard_sizes
from orchestrator.costs import summarize, transfer_bytes
from orchestrator.hyperparams import DEFAULTS, FINE_TUNE_DEFAULTS, resolve_hyper, worker_hyper
from orchestrator.invokers.base import Invocation
from orchestrator.invokers.retry import invoke_with_retries
from orchestrator.report import progress_bar
from orchestrator.traffic import METER, Traffic
from orchestrator.training_report import round_line, write_outputs


class TrainingFailed(RuntimeError):
    """The run cannot go on; the message says why and what to do. Committed rounds are intact."""


@dataclass
class TrainOptions:
    dataset: str
    run: str
    rounds: int
    workers: int | None = None           # default: the dataset's shard count
    local_epochs: float | None = None    # None: DEFAULTS, or the run's own values on --resume; fractions too
    local_steps: int | None = None       # rounds of this many batches instead of whole epochs
    batch_size: int | None = None        # new runs: the batch across workers
    learning_rate: float | None = None
    seed: int | None = None
    warmup_epochs: float | None = None   # learning-rate warm-up, in epochs of a worker's shard
    min_workers: int | None = None       # default: all workers must succeed
    retries: int = 1
    resume: bool = False
    time_budget_s: float | None = None
    version: str | None = None           # None: 1.1, or the --init-from model's
    stem: str | None = None              # auto (None) | small | imagenet; --init-from: the model's
    init_from: str | None = None         # MODEL[:VERSION]: round 0 from a servable version's weights
    trainable: str | None = None         # all | classifier (default: all; classifier with --init-from)
    classifier_relu: bool = False        # the reference's ReLU after conv10 (see dlpipe.train.model)
    output_dir: Path | None = Path(".")  # local copies of metrics.json and the plot
    keep_worker_weights: bool = False
    aggregate: str = "auto"              # local | lambda | auto: lambda when the invoker is (orchestrator.aggregation)


@dataclass
class TrainResult:
    run: str
    records: list[dict]
    rounds_run: int
    wall_seconds: float
    invocations: list[Invocation] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def final(self) -> dict:
        return self.records[-1] if self.records else {}


@dataclass
class Plan:
    """What every round of this invocation of the job uses."""

    run: TrainingRun
    config: RunConfig
    shard_parts: list[list[str]]
    val_parts: list[str]
    min_workers: int
    eval_batch_size: int = 256           # what fits the function's memory (orchestrator.capacity)
    notes: list[str] = field(default_factory=list)   # said before the first round

    @property
    def init_from(self) -> InitFrom | None:
        lineage = self.config.init_from
        if lineage is None:
            return None
        return InitFrom(weights_key=version_key(lineage.model, lineage.version, "weights.npz"),
                        keep_classifier=lineage.kept_classifier)


# --- planning --------------------------------------------------------------------------

def read_manifest(data_store, dataset: str) -> dict:
    try:
        return manifests.read_manifest(data_store, dataset).model_dump(mode="json")
    except manifests.ManifestError as err:
        raise TrainingFailed(str(err)) from None


def assign_shards(manifest: dict, workers: int | None) -> list[list[str]]:
    """Part keys for each worker: shard w, w+W, ... (all of them when W = shard count)."""
    shards = manifest["shards"]
    workers = workers or len(shards)
    if not 1 <= workers <= len(shards):
        raise TrainingFailed(f"dataset {manifest['dataset']!r} was prepared in {len(shards)} shards, so it can feed "
                             f"1 to {len(shards)} workers, not {workers}; run `orchestrator prepare` again with "
                             f"--workers {workers}")
    assigned = [[key for s in shards[w::workers] for key in s["parts"]] for w in range(workers)]
    empty = [w for w, parts in enumerate(assigned) if not parts]
    if empty:
        raise TrainingFailed(f"workers {empty} would get no data; prepare with more images or fewer workers")
    return assigned


def _check_options(options: TrainOptions) -> None:
    if options.rounds < 1:
        raise TrainingFailed("--rounds must be at least 1")
    if options.retries < 0:
        raise TrainingFailed("--retries must be >= 0")
    try:
        validate_name(options.run, "run name")
        manifests.validate_dataset(options.dataset)
    except ValueError as err:
        raise TrainingFailed(str(err)) from None


def _new_config(options: TrainOptions, manifest: dict, training: Training, model_store) -> RunConfig:
    lineage = None
    try:
        if options.init_from:
            model, lineage = _fine_tune_model(options, manifest, model_store)
        else:
            model = model_config_for(manifest["recipe"], manifest["classes"], options.version or "1.1",
                                     options.stem or "auto", options.classifier_relu)
    except (ValueError, ValidationError) as err:
        raise TrainingFailed(f"cannot build a model for dataset {options.dataset!r}: {err}") from None
    return RunConfig(model=model, dataset=options.dataset, manifest_id=manifest.get("id"),
                     training=training, created=now_iso(),
                     init_from=lineage)


def _same_recipe(a: dict, b: dict) -> bool:
    return Recipe.from_dict(a).to_dict() == Recipe.from_dict(b).to_dict()


def _fine_tune_model(options: TrainOptions, manifest: dict, model_store) -> tuple[ModelConfig, Lineage]:
    """The starting version's network with the dataset's classes; options that contradict it are refused."""
    try:
        start = starting_point(model_store, options.init_from)
    except CheckpointError as err:
        raise TrainingFailed(str(err)) from None
    source, what = start.config, f"{start.name} {start.version}"
    if options.version not in (None, source.version):
        raise TrainingFailed(f"--version {options.version} conflicts with --init-from {what}, a SqueezeNet "
                             f"{source.version}: drop --version")
    if options.stem is not None:
        raise TrainingFailed(f"--stem conflicts with --init-from: the first convolution comes from {what}; "
                             "drop --stem")
    if not _same_recipe(manifest["recipe"], source.recipe):
        raise TrainingFailed(
            f"dataset {options.dataset!r} was prepared with recipe {json.dumps(manifest['recipe'])}, but {what} "
            f"expects {json.dumps(source.recipe)}; prepare it with the model's own recipe: `orchestrator prepare "
            f"--source {manifest.get('source') or 'PREFIX'} --dataset {options.dataset} --recipe-from "
            f"{start.name}:{start.version}`")
    labels = list(manifest["classes"])
    keep = labels == list(source.labels)
    model = ModelConfig(**{**source.model_dump(), "labels": labels, "classes": len(labels),
                           "classifier_relu": source.classifier_relu if keep else options.classifier_relu})
    return model, Lineage(model=start.name, version=start.version, weights_sha256=start.weights_sha256,
                          kept_classifier=keep)


def _check_resume(options: TrainOptions, run: TrainingRun, config: RunConfig, manifest: dict) -> None:
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
    if config.manifest_id != manifest.get("id"):
        raise TrainingFailed(f"dataset {options.dataset!r} was prepared differently after run {options.run!r} started, "
                             "so resuming would train on different shards; start a new --run")


def plan_run(session, options: TrainOptions) -> Plan:
    """Open or start the run, after checking every option against the dataset and the run's own config."""
    _check_options(options)
    run = TrainingRun(session.model_store(), options.run)
    manifest = read_manifest(session.data_store(), options.dataset)
    config = run.config()
    if config is not None:
        _check_resume(options, run, config, manifest)
    stored = config.training.model_dump(exclude_unset=True) if config else {}
    workers = options.workers or stored.get("workers") or len(manifest["shards"])
    if stored.get("workers") not in (None, workers):
        raise TrainingFailed(f"run {options.run!r} was trained with {stored['workers']} workers; "
                             "resume it with the same --workers (or start a new --run)")
    shard_parts, shard_sizes = assign_shards(manifest, workers), worker_shard_sizes(manifest, workers)
    try:
        training = resolve_hyper(options, stored, FINE_TUNE_DEFAULTS if options.init_from else DEFAULTS, workers,
                                 max(shard_sizes))
    except ValueError as err:
        raise TrainingFailed(str(err)) from None
    min_workers = options.min_workers if options.min_workers is not None else workers
    if not 1 <= min_workers <= workers:
        raise TrainingFailed(f"--min-workers must be between 1 and {workers}, not {min_workers}")
    try:
        eval_batch = check_worker_memory(manifest, training, config.model.small_inputs if config else
                                         {"small": True, "imagenet": False}.get(options.stem or "auto"))
    except DoesNotFit as err:
        raise TrainingFailed(str(err)) from None
    if config is None:
        config = _new_config(options, manifest, training, run.store)
        run.start(config)
    note = cache_note(input_shape(manifest["recipe"]), shard_sizes) if not session.data_store().is_local else None
    return Plan(run, config, shard_parts, manifest.get("val", {}).get("parts", []), min_workers, eval_batch,
                [note] if note else [])


# --- the loop ---------------------------------------------------------------------------

def run_training(session, options: TrainOptions, out: TextIO | None = None, progress: bool = True) -> TrainResult:
    """Train `options.run` up to `options.rounds` rounds; raises TrainingFailed on a round that cannot close."""
    out = out or sys.stdout  # resolved per call, so redirected output is honoured
    start = time.perf_counter()
    plan = plan_run(session, options)
    for note in plan.notes:
        print(note, file=out)
    invoker, run = session.invoker, plan.run
    first_record = len(invoker.records)
    failures: list[tuple[str, str]] = []
    last = run.latest_round()
    todo = max(0, options.rounds - (last or 0))
    bar = progress_bar(total=todo * len(plan.shard_parts) + (1 if last is None else 0), unit="worker",
                       desc=f"train {options.run}", enabled=progress)

    def tick(inv: Invocation) -> None:
        bar.update(1 if inv.ok else 0)

    try:
        if last is None:
            _init_round(invoker, plan, options, tick)
            last = 0
        elif last >= options.rounds:
            print(f"run {options.run!r} already has {last} completed rounds (asked for {options.rounds}); "
                  "nothing to train", file=out)
        for round_ in range(last + 1, options.rounds + 1):
            record = _train_round(invoker, plan, options, round_, tick, failures)
            bar.write(round_line(record), file=out)
    finally:
        bar.close()

    records = run.records()
    outputs = write_outputs(run, records, options.output_dir)
    return TrainResult(run=options.run, records=records, rounds_run=todo, wall_seconds=time.perf_counter() - start,
                       invocations=invoker.records[first_record:], failures=failures, outputs=outputs)


def _init_round(invoker, plan: Plan, options: TrainOptions, tick: Callable[[Invocation], None]) -> None:
    """Round 0: the initial weights, made by the train function from the seed."""
    started, n_before, run = time.perf_counter(), len(invoker.records), plan.run
    event = InitRequest(action="init", model=plan.config.model, seed=plan.config.training.seed,
                        output_key=run.global_key(0), init_from=plan.init_from).model_dump(mode="json")
    done, errors = invoke_with_retries(invoker, "train", [event], options.retries, tick,
                                       check=_parse_check(InitResponse))
    if errors:
        raise TrainingFailed(f"creating the initial weights failed: {errors[0][1]}")
    run.commit_round(0, {
        "kind": "init", "workers": 0, "workers_ok": 0, "train": None, "val": None,
        "parameters": InitResponse.model_validate(done[0]).parameters,
        "wall_seconds": round(time.perf_counter() - started, 3),
        "gb_seconds": summarize(invoker.records[n_before:]).gb_seconds, "completed_at": now_iso()})


def _parse_check(model) -> Callable[[dict, object], str | None]:
    """A retry check that refuses error answers (their message) and replies that are not `model`."""
    def check(event: dict, payload: object) -> str | None:
        try:
            reply = parse_reply(payload, model)
        except ValidationError as err:
            return f"bad response ({err.error_count()} problems): {str(payload)[:200]}"
        return reply.error if isinstance(reply, ErrorResponse) else None
    return check


def _check_train(event: dict, payload: object) -> str | None:
    problem = _parse_check(TrainResponse)(event, payload)
    if problem:
        return problem
    response = TrainResponse.model_validate(payload)
    if response.num_examples <= 0:
        return "trained on no examples (time budget too small?)"
    return None


def _worker_events(plan: Plan, options: TrainOptions, round_: int) -> list[dict]:
    run, config = plan.run, plan.config
    hyper = worker_hyper(config.training)
    return [TrainRequest(action="train", run=run.name, round=round_, worker=w, attempt=0,
                         global_key=run.global_key(round_ - 1),
                         global_optimizer_key=run.optimizer_key(round_ - 1) if round_ > 1 else None,
                         shard_keys=parts, output_key=run.worker_key(round_, w, 0),
                         output_optimizer_key=run.worker_optimizer_key(round_, w, 0), model=config.model,
                         hyper=hyper, time_budget_s=options.time_budget_s).model_dump(mode="json")
            for w, parts in enumerate(plan.shard_parts)]


def _average(invoker, plan: Plan, options: TrainOptions, round_: int, results: dict[int, TrainResponse]) -> dict:
    """The round's optimizer state, then its global weights: example-weighted means; how, for the record.

    The aggregation tree over the workers in worker order (not completion order) fixes the
    summation order, so the result is reproducible and the same bytes whichever engine
    aggregates (--aggregate: here, or the train function's aggregate action in the cloud).
    """
    try:
        engine = resolve_engine(options.aggregate, invoker)
        return aggregate_round(plan.run, round_, results, engine, invoker, options.retries).as_record()
    except (AggregationFailed, ValueError) as err:
        raise TrainingFailed(f"round {round_}: cannot average the workers' results: {err}. The last completed "
                             f"round is {round_ - 1}: fix the cause and continue with --resume (if a worker "
                             "diverged, start a new --run with a lower --lr)") from err


def evaluate(invoker, plan: Plan, weights_key: str, retries: int) -> dict | None:
    """Validation loss/accuracy of stored weights, one invocation per validation part."""
    if not plan.val_parts:
        return None
    events = [EvaluateRequest(action="evaluate", weights_key=weights_key, shard_keys=[part], model=plan.config.model,
                              trainable=plan.config.training.trainable,
                              batch_size=plan.eval_batch_size).model_dump(mode="json")
              for part in plan.val_parts]
    done, errors = invoke_with_retries(invoker, "train", events, retries, check=_parse_check(EvaluateResponse))
    if errors:
        reasons = "; ".join(f"part {i}: {err}" for i, (_, err) in sorted(errors.items()))
        raise TrainingFailed(f"evaluating {weights_key} failed: {reasons}")
    results = [EvaluateResponse.model_validate(done[i]) for i in sorted(done)]
    return {"count": sum(r.count for r in results),
            **weighted_metrics((r.model_dump(), r.count) for r in results),
            "seconds": max(r.seconds for r in results)}


def _train_round(invoker, plan: Plan, options: TrainOptions, round_: int, tick: Callable[[Invocation], None],
                 failures: list[tuple[str, str]]) -> dict:
    run = plan.run
    round_start, n_before, traffic_before = time.perf_counter(), len(invoker.records), METER.snapshot()
    events = _worker_events(plan, options, round_)

    def retry_event(event: dict, attempt: int) -> dict:
        return {**event, "attempt": attempt, "output_key": run.worker_key(round_, event["worker"], attempt),
                "output_optimizer_key": run.worker_optimizer_key(round_, event["worker"], attempt)}

    done, errors = invoke_with_retries(invoker, "train", events, options.retries, tick, retry_event, _check_train)
    for w, (attempts, error) in sorted(errors.items()):
        failures.append((f"round {round_} worker {w}", f"{error} (after {attempts} attempts)"))
    if len(done) < plan.min_workers:
        reasons = "; ".join(f"worker {w}: {error}" for w, (_, error) in sorted(errors.items()))
        raise TrainingFailed(
            f"round {round_}: only {len(done)} of {len(events)} workers succeeded (need {plan.min_workers}) after "
            f"{options.retries} retries: {reasons}. The last completed round is {round_ - 1} "
            f"({run.url(run.global_key(round_ - 1))}). Fix the cause and continue with --resume, or "
            "let a round close on fewer workers with --min-workers.")
    results = {w: TrainResponse.model_validate(done[w]) for w in sorted(done)}
    trained_at = time.perf_counter()
    aggregation = _average(invoker, plan, options, round_, results)
    averaged_at = time.perf_counter()
    val = evaluate(invoker, plan, run.global_key(round_), options.retries)
    record = _round_record(results, errors, len(events), val, round_start, trained_at, averaged_at)
    record["gb_seconds"] = round(summarize(invoker.records[n_before:]).gb_seconds, 3)
    record["aggregation"] = aggregation
    record["transfer"] = _transfer_record(invoker.records[n_before:], METER.snapshot() - traffic_before)
    run.commit_round(round_, record)
    if not options.keep_worker_weights:
        run.delete_worker_weights(round_)
    return {**record, "round": round_}


def _transfer_record(records: list[Invocation], traffic: Traffic) -> dict:
    """What went through the orchestrator this round (its own commit excluded): bytes each way, store requests."""
    down, up = transfer_bytes(records, traffic)
    return {"bytes_down": down, "bytes_up": up, "store_requests": traffic.requests}


def _round_record(results: dict[int, TrainResponse], errors: dict[int, tuple[int, str]], workers: int,
                  val: dict | None, round_start: float, trained_at: float, averaged_at: float) -> dict:
    wall = time.perf_counter() - round_start
    train_max = max(r.train_seconds for r in results.values())
    return {
        "kind": "round", "workers": workers, "workers_ok": len(results),
        "worker_results": [r.model_dump(mode="json") for r in results.values()],
        "failed_workers": [{"worker": w, "attempts": a, "error": e} for w, (a, e) in sorted(errors.items())],
        "train": {"examples": sum(r.num_examples for r in results.values()),
                  **weighted_metrics((r.model_dump(), r.num_examples) for r in results.values())},
        "val": val,
        "wall_seconds": round(wall, 3),
        "phase_seconds": {"workers": round(trained_at - round_start, 3), "average": round(averaged_at - trained_at, 3),
                          "evaluate": round(time.perf_counter() - averaged_at, 3)},
        "train_share": round(train_max / wall, 4) if wall > 0 else None,
        "completed_at": now_iso(),
    }
