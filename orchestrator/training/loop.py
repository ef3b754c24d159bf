"""The round loop of data-parallel training: orchestration only, no ML.

Each round: every worker (a train function invocation) starts from the global weights and
trains on its shard; failed workers are retried; the new global weights (and Adam state)
are the example-weighted mean of the workers' (dlpipe.train.averaging, in worker order, one
worker in memory at a time); the evaluate action scores them on the validation parts; then
the round is committed (dlpipe.runs.run: optimizer state, weights, record, latest pointer,
in that order). Everything a worker does is a function of (seed, round, worker), so a
resumed run ends with the same weights as an uninterrupted one.

`run_training(session, options)` is the whole job, callable without the CLI (the demo
chains it after `prepare`); orchestrator.training.plan checks everything before round 0.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from dlpipe.runs.record import (
    AggregationRecord,
    FailedWorker,
    LambdaPhases,
    PhaseSeconds,
    RoundRecord,
    TrainScore,
    TransferRecord,
    ValScore,
)
from dlpipe.shared.clock import now_iso
from dlpipe.shared.names import validate_name
from dlpipe.train.averaging import weighted_metrics
from dlpipe.train.weights import CheckpointError
from dlpipe.wire import (
    EvaluateRequest,
    EvaluateResponse,
    InitRequest,
    InitResponse,
    TrainRequest,
    TrainResponse,
)
from orchestrator.costs import summarize, transfer_bytes
from orchestrator.functions import function_spec
from orchestrator.invokers.base import Invocation, Invoker
from orchestrator.invokers.projection import projected_ms
from orchestrator.invokers.retry import invoke_for_replies
from orchestrator.lease import LeaseHeld, LeaseLost, RunLease
from orchestrator.report import progress_bar
from orchestrator.session import Session
from orchestrator.traffic import Meter, Traffic
from orchestrator.training import tensorboard
from orchestrator.training.aggregation import AggregationFailed, aggregate_round, outer_request, resolve_engine
from orchestrator.training.hyperparams import worker_hyper
from orchestrator.training.plan import Plan, TrainingFailed, TrainOptions, plan_run
from orchestrator.training.report import round_line, write_outputs


@dataclass
class TrainResult:
    run: str
    records: list[RoundRecord]
    rounds_run: int
    wall_seconds: float
    invocations: list[Invocation] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def final(self) -> RoundRecord | None:
        return self.records[-1] if self.records else None


# --- the loop ---------------------------------------------------------------------------

def run_training(session: Session, options: TrainOptions, out: TextIO | None = None,
                 progress: bool = True) -> TrainResult:
    """Train `options.run` up to `options.rounds` rounds; raises TrainingFailed on a round that cannot close.

    The run's lease (orchestrator.lease) is held throughout: a second trainer is refused.
    """
    try:
        validate_name(options.run, "run name")
        lease = RunLease(session.model_store(), options.run).acquire()
    except (ValueError, LeaseHeld) as err:
        raise TrainingFailed(str(err)) from None
    try:
        return _train(session, options, out, progress, lease)
    except (LeaseLost, CheckpointError) as err:   # CheckpointError: damaged run files, named with the way out
        raise TrainingFailed(str(err)) from None
    finally:
        lease.release()


def _train(session: Session, options: TrainOptions, out: TextIO | None, progress: bool,
           lease: RunLease) -> TrainResult:
    out = out or sys.stdout  # resolved per call, so redirected output is honoured
    start = time.perf_counter()
    plan = plan_run(session, options)
    plan.run.fence = lease.renew
    committed = plan.run.records()   # every committed round's record readable before any work (CheckpointError)
    for note in plan.notes:
        print(note, file=out)
    invoker, run = session.invoker, plan.run
    first_record = len(invoker.records)
    failures: list[tuple[str, str]] = []
    last = run.latest_round()
    todo = max(0, plan.rounds - (last or 0))
    bar = progress_bar(total=todo * len(plan.shard_parts) + (1 if last is None else 0), unit="worker",
                       desc=f"train {options.run}", enabled=progress)

    def tick(inv: Invocation) -> None:
        bar.update(1 if inv.ok else 0)

    board = None
    try:
        if last is None:
            _init_round(invoker, plan, options, tick)
            last, committed = 0, [run.record(0)]
        elif last >= plan.rounds:
            print(f"run {options.run!r} already has {last} completed rounds (asked for {plan.rounds}); "
                  "nothing to train", file=out)
        board = tensorboard.RunBoard.for_session(session, run.name, committed)   # followed live
        previous = committed[-1] if last else None
        epochs = previous_epochs(previous, plan)
        for round_ in range(last + 1, plan.rounds + 1):
            record = _train_round(invoker, session.meter, plan, options, round_, tick, failures, epochs, previous)
            epochs, previous = record.epochs or 0.0, record
            board.add(record)
            bar.write(round_line(record), file=out)
    finally:
        bar.close()
        board_outputs = board.close() if board is not None else {}

    records = run.records()
    outputs = write_outputs(run, records, options.output_dir)
    outputs.update(board_outputs)
    return TrainResult(run=options.run, records=records, rounds_run=todo, wall_seconds=time.perf_counter() - start,
                       invocations=invoker.records[first_record:], failures=failures, outputs=outputs)


def _init_round(invoker, plan: Plan, options: TrainOptions, tick: Callable[[Invocation], None]) -> None:
    """Round 0: the initial weights, made by the train function from the seed."""
    started, n_before, run = time.perf_counter(), len(invoker.records), plan.run
    event = InitRequest(action="init", model=plan.config.model, seed=plan.config.training.seed,
                        output_key=run.global_key(0), init_from=plan.init_from).model_dump(mode="json")
    done, errors = invoke_for_replies(invoker, "train", [event], options.retries, InitResponse, tick)
    if errors:
        run.store.delete(run.config_key)   # no round made: the run name stays free for the next try
        raise TrainingFailed(f"creating the initial weights failed: {errors[0][1]}")
    run.commit_round(0, RoundRecord(
        kind="init", workers=0, workers_ok=0, train=None, val=None, parameters=done[0].parameters, epochs=0.0,
        wall_seconds=round(time.perf_counter() - started, 3),
        lambda_seconds=round(sum(inv.lambda_seconds for inv in invoker.records[n_before:]), 3),
        gb_seconds=summarize(invoker.records[n_before:]).gb_seconds, completed_at=now_iso()))


def _check_train(event: dict, response: TrainResponse) -> str | None:
    if response.num_examples <= 0:
        return "trained on no examples (time budget too small?)"
    return None


def _optimizer_keys(plan: Plan, round_: int, worker: int, attempt: int,
                    own_states: dict[int, str]) -> tuple[str | None, str]:
    """(the Adam state a worker starts from, where it stores its own): the round's average, or its own.

    Own state (DiLoCo's inner optimizers): kept per worker and attempt under the round, read back next
    round from the key the last round's record names; a worker without one (it failed last round
    under --min-workers) starts a fresh Adam.
    """
    run = plan.run
    if plan.config.training.worker_optimizer == "averaged":
        return (run.optimizer_key(round_ - 1) if round_ > 1 else None), run.worker_optimizer_key(round_, worker,
                                                                                                 attempt)
    return own_states.get(worker), run.worker_state_key(round_, worker, attempt)


def _own_states(plan: Plan, previous: RoundRecord | None) -> dict[int, str]:
    """Each worker's own Adam state after the last round, as its record names it (its successful attempt's)."""
    if plan.config.training.worker_optimizer != "own" or previous is None:
        return {}
    results = previous.worker_results or []
    return {int(r["worker"]): str(r["optimizer_key"]) for r in results if r.get("optimizer_key")}


def _worker_events(plan: Plan, options: TrainOptions, round_: int, own_states: dict[int, str]) -> list[dict]:
    run, config = plan.run, plan.config
    hyper = worker_hyper(config.training)
    events = []
    for w, parts in enumerate(plan.shard_parts):
        start, output = _optimizer_keys(plan, round_, w, 0, own_states)
        events.append(TrainRequest(action="train", run=run.name, round=round_, worker=w, attempt=0,
                                   global_key=run.global_key(round_ - 1), global_optimizer_key=start,
                                   shard_keys=parts, output_key=run.worker_key(round_, w, 0),
                                   output_optimizer_key=output, model=config.model, hyper=hyper,
                                   time_budget_s=options.time_budget_s).model_dump(mode="json"))
    return events


def _average(invoker: Invoker, plan: Plan, options: TrainOptions, round_: int,
             results: dict[int, TrainResponse]) -> AggregationRecord:
    """The round's optimizer state, then its global weights: example-weighted means; how, for the record.

    The aggregation tree over the workers in worker order (not completion order) fixes the
    summation order, so the result is reproducible and the same bytes whichever engine
    aggregates (--aggregate: here, or the train function's aggregate action in the cloud).
    """
    training = plan.config.training
    try:
        engine = resolve_engine(options.aggregate, invoker)
        # One worker: nothing was lost by averaging, and extrapolating its own steps only fights its Adam
        # (Fashion-MNIST, 6,000 images, 4 epochs: 74.4 % with the outer step, 78.6 % without).
        outer = outer_request(plan.run, round_, training.outer_learning_rate, training.outer_momentum) \
            if training.workers > 1 else None
        return aggregate_round(plan.run, round_, results, engine, invoker, options.retries, outer,
                               average_optimizer=training.worker_optimizer == "averaged",
                               precision=training.optimizer_precision, fan_in=training.tree_fan_in).as_record()
    except (AggregationFailed, ValueError) as err:
        raise TrainingFailed(f"round {round_}: cannot average the workers' results: {err}. The last completed "
                             f"round is {round_ - 1}: fix the cause and continue with --resume (if a worker "
                             "diverged, start a new --run with a lower --lr)") from err


def evaluate(invoker: Invoker, plan: Plan, weights_key: str, retries: int,
             images: int | None = None) -> ValScore | None:
    """Validation loss/accuracy of stored weights, one invocation per validation part, at once.

    images: score a fixed subset of about that many (every k-th image of each part); None: all.
    """
    if not plan.val_parts:
        return None
    limit = None if images is None else max(1, -(-images // len(plan.val_parts)))
    events = [EvaluateRequest(action="evaluate", weights_key=weights_key, shard_keys=[part], model=plan.config.model,
                              trainable=plan.config.training.trainable, batch_size=plan.eval_batch_size,
                              limit=limit).model_dump(mode="json")
              for part in plan.val_parts]
    first = len(invoker.records)
    done, errors = invoke_for_replies(invoker, "train", events, retries, EvaluateResponse)
    if errors:
        reasons = "; ".join(f"part {i}: {err}" for i, (_, err) in sorted(errors.items()))
        raise TrainingFailed(f"evaluating {weights_key} failed: {reasons}")
    results = [done[i] for i in sorted(done)]
    return ValScore(count=sum(r.count for r in results),
                    **weighted_metrics((r.model_dump(), r.count) for r in results),
                    seconds=max(r.seconds for r in results), subset=limit is not None,
                    lambda_seconds=round(max(inv.lambda_seconds for inv in invoker.records[first:]), 3))


def _eval_images(plan: Plan, options: TrainOptions, round_: int) -> int | None:
    """The subset's size this round; None (everything) every --full-eval-every rounds, at the end, and when the
    subset would hold every validation image anyway (then the round line does not mark it as a subset)."""
    if options.eval_images is None or round_ == plan.rounds or round_ % options.full_eval_every == 0 or \
            options.eval_images >= plan.val_images:
        return None
    return options.eval_images


def _train_round(invoker: Invoker, meter: Meter, plan: Plan, options: TrainOptions, round_: int,
                 tick: Callable[[Invocation], None], failures: list[tuple[str, str]],
                 epochs_before: float, previous: RoundRecord | None) -> RoundRecord:
    """Round `round_` from the last committed round's record (`previous`; None before round 1)."""
    run = plan.run
    round_start, n_before, traffic_before = time.perf_counter(), len(invoker.records), meter.snapshot()
    own_states = _own_states(plan, previous)
    events = _worker_events(plan, options, round_, own_states)

    def retry_event(event: dict, attempt: int) -> dict:
        worker = event["worker"]
        return {**event, "attempt": attempt, "output_key": run.worker_key(round_, worker, attempt),
                "output_optimizer_key": _optimizer_keys(plan, round_, worker, attempt, own_states)[1]}

    done, errors = invoke_for_replies(invoker, "train", events, options.retries, TrainResponse, tick, retry_event,
                                      _check_train)
    worker_calls = invoker.records[n_before:]
    for w, (attempts, error) in sorted(errors.items()):
        failures.append((f"round {round_} worker {w}", f"{error} (after {attempts} attempts)"))
    if len(done) < plan.min_workers:
        reasons = "; ".join(f"worker {w}: {error}" for w, (_, error) in sorted(errors.items()))
        raise TrainingFailed(
            f"round {round_}: only {len(done)} of {len(events)} workers succeeded (need {plan.min_workers}) after "
            f"{options.retries} retries: {reasons}. The last completed round is {round_ - 1} "
            f"({run.url(run.global_key(round_ - 1))}). Fix the cause and continue with --resume, or "
            "let a round close on fewer workers with --min-workers.")
    results = {w: done[w] for w in sorted(done)}
    trained_at = time.perf_counter()
    aggregation = _average(invoker, plan, options, round_, results)
    averaged_at = time.perf_counter()
    val = evaluate(invoker, plan, run.global_key(round_), options.retries, _eval_images(plan, options, round_))
    record = _round_record(round_, results, errors, len(events), val, round_start, trained_at, averaged_at)
    record.gb_seconds = round(summarize(invoker.records[n_before:]).gb_seconds, 3)
    record.aggregation = aggregation
    record.transfer = _transfer_record(invoker.records[n_before:], meter.snapshot() - traffic_before)
    record.epochs = round(epochs_before + record.train.examples / plan.train_images, 4) if record.train else None
    _lambda_times(record, worker_calls, results, aggregation, val)
    run.commit_round(round_, record)
    if not options.keep_worker_weights:
        run.delete_worker_weights(round_)
    if plan.config.training.worker_optimizer == "own" and round_ > 1:
        run.delete_worker_states(round_ - 1)   # resuming needs only the last committed round's
    return record


def previous_epochs(last: RoundRecord | None, plan: Plan) -> float:
    """Epochs of data done by the `last` committed round: from its record (older runs' records lack it:
    estimated)."""
    if last is None or last.round <= 0:
        return 0.0
    return float(last.epochs) if last.epochs is not None else last.round * plan.epochs_per_round


def _lambda_times(record: RoundRecord, calls: list[Invocation], results: dict[int, TrainResponse],
                  aggregation: AggregationRecord, val: ValScore | None) -> None:
    """The round's time on Lambda: its slowest worker (attempts one after another) plus its serial work.

    Local invoker: each invocation's projected time (orchestrator.invokers.projection); Lambda: measured.
    The training share is the slowest worker's own training time, projected from its CPU time likewise.
    """
    per_worker: dict[int, float] = {}
    for inv in calls:
        worker = inv.extra.get("event", inv.index)
        per_worker[worker] = per_worker.get(worker, 0.0) + inv.lambda_seconds
    workers = max(per_worker.values(), default=0.0)
    aggregate = aggregation.lambda_seconds or 0.0
    evaluate = (val.lambda_seconds or 0.0) if val else 0.0
    total = workers + aggregate + evaluate
    projected = any("projected_ms" in inv.extra for inv in calls)
    training = max((training_seconds(r, projected) for r in results.values()), default=0.0)
    record.lambda_seconds = round(total, 3)
    record.lambda_phase_seconds = LambdaPhases(workers=round(workers, 3), aggregate=aggregate, evaluate=evaluate)
    record.lambda_train_share = round(min(1.0, training / total), 4) if total > 0 else None


def training_seconds(result: TrainResponse, projected: bool) -> float:
    """A worker's training time on Lambda: projected from its CPU time (local invoker), else as measured."""
    if not projected or result.train_cpu_seconds is None:
        return result.train_seconds
    return projected_ms("train", result.train_cpu_seconds * 1000, function_spec("train").memory_mb) / 1000


def _transfer_record(records: list[Invocation], traffic: Traffic) -> TransferRecord:
    """What went through the orchestrator this round (its own commit excluded): bytes each way, store requests."""
    down, up = transfer_bytes(records, traffic)
    return TransferRecord(bytes_down=down, bytes_up=up, store_requests=traffic.requests)


def _round_record(round_: int, results: dict[int, TrainResponse], errors: dict[int, tuple[int, str]], workers: int,
                  val: ValScore | None, round_start: float, trained_at: float, averaged_at: float) -> RoundRecord:
    """The round's record; its bill, aggregation and transfer are filled in once known."""
    wall = time.perf_counter() - round_start
    train_max = max(r.train_seconds for r in results.values())
    return RoundRecord(
        round=round_, kind="round", workers=workers, workers_ok=len(results),
        worker_results=[r.model_dump(mode="json") for r in results.values()],
        failed_workers=[FailedWorker(worker=w, attempts=a, error=e) for w, (a, e) in sorted(errors.items())],
        train=TrainScore(examples=sum(r.num_examples for r in results.values()),
                         **weighted_metrics((r.model_dump(), r.num_examples) for r in results.values())),
        val=val,
        wall_seconds=round(wall, 3), gb_seconds=0.0,
        phase_seconds=PhaseSeconds(workers=round(trained_at - round_start, 3),
                                   average=round(averaged_at - trained_at, 3),
                                   evaluate=round(time.perf_counter() - averaged_at, 3)),
        train_share=round(train_max / wall, 4) if wall > 0 else None,
        completed_at=now_iso(),
    )
