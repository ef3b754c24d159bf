"""The round loop of data-parallel training: orchestration only, no ML.

Each round: every worker (a train function invocation) starts from the global weights and
trains on its shard; failed workers are retried; the new global weights (and Adam state)
are the example-weighted mean of the workers' (the aggregation tree, in worker order); the
evaluate action scores them on the validation parts, beside the next round's workers
(orchestrator.training.evaluation); then the round is committed (dlpipe.runs.run: optimizer
state, weights, record, latest pointer, in that order). Everything a worker does is a function
of (seed, round, worker), so a resumed run ends with the same weights as an uninterrupted one.

`run_training(session, options)` is the whole job, callable without the CLI (the demo
chains it after `prepare`); orchestrator.training.plan checks everything before round 0.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
from dlpipe.wire import InitRequest, InitResponse, TrainResponse, WarmRequest, Warmup
from orchestrator.costs import summarize, transfer_bytes
from orchestrator.functions import function_spec
from orchestrator.invokers.base import Invocation, Invoker
from orchestrator.invokers.projection import projected_ms
from orchestrator.invokers.retry import invoke_for_replies, judged_reply
from orchestrator.lease import LeaseHeld, LeaseLost, RunLease
from orchestrator.report import progress_bar
from orchestrator.session import Session
from orchestrator.traffic import Meter, Traffic
from orchestrator.training import tensorboard
from orchestrator.training.aggregation import AggregationFailed, aggregate_round, outer_request, resolve_engine
from orchestrator.training.evaluation import eval_images, evaluate
from orchestrator.training.hyperparams import worker_hyper
from orchestrator.training.plan import Plan, TrainingFailed, TrainOptions, plan_run
from orchestrator.training.report import round_line, write_outputs
from orchestrator.training.workers import RoundWorkers, enough_workers, run_workers


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

        def show(record: RoundRecord) -> None:
            board.add(record)
            bar.write(round_line(record), file=out)

        _rounds(invoker, session.meter, plan, options, range(last + 1, plan.rounds + 1), tick, failures,
                committed[-1] if last else None, show)
    finally:
        bar.close()
        board_outputs = board.close() if board is not None else {}

    records = run.records()
    outputs = write_outputs(run, records, options.output_dir)
    outputs.update(board_outputs)
    return TrainResult(run=options.run, records=records, rounds_run=todo, wall_seconds=time.perf_counter() - start,
                       invocations=invoker.records[first_record:], failures=failures, outputs=outputs)


def _rounds(invoker: Invoker, meter: Meter, plan: Plan, options: TrainOptions, rounds: range,
            tick: Callable[[Invocation], None], failures: list[tuple[str, str]], previous: RoundRecord | None,
            show: Callable[[RoundRecord], None]) -> None:
    """The rounds, each scored and committed on the evaluator's thread while the next one's workers train.

    Rounds commit in order (one evaluator thread), each as soon as its score is in, so a crash loses only
    the rounds under way; a failure stops the run once the rounds already scored are committed."""
    epochs = previous_epochs(previous, plan)
    worker_results = (previous.worker_results or []) if previous else []
    scoring: deque[Future[RoundRecord]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate") as evaluator:
        try:
            for round_ in rounds:
                workers = run_workers(invoker, meter, plan, options, round_, tick, worker_results)
                _show_scored(scoring, show, wait=False)   # an evaluation that failed stops the run here
                enough_workers(plan, options, workers, failures)
                averaged = _aggregate(invoker, meter, plan, options, workers, epochs)
                scoring.append(evaluator.submit(_score_and_commit, invoker, plan, options, averaged,
                                                round_ == rounds[-1]))
                epochs = averaged.epochs or 0.0
                worker_results = [r.model_dump(mode="json") for r in workers.results.values()]
        except BaseException:
            _show_scored(scoring, show, wait=True, quiet=True)   # commit what is scored; the first error stands
            raise
        _show_scored(scoring, show, wait=True)


def _show_scored(scoring: deque[Future[RoundRecord]], show: Callable[[RoundRecord], None], wait: bool,
                 quiet: bool = False) -> None:
    """Show the rounds committed so far, in order (all of them, waiting, with `wait`); `quiet`: skip failures."""
    while scoring and (wait or scoring[0].done()):
        future = scoring.popleft()
        try:
            record = future.result()
        except Exception:
            if quiet:
                continue
            raise
        show(record)


def _init_round(invoker, plan: Plan, options: TrainOptions, tick: Callable[[Invocation], None]) -> None:
    """Round 0: the initial weights, made by the train function from the seed; beside them, N - 1 more
    environments made ready to train (`warm`), so that round 1's N workers all start warm.

    One batch of N calls (the init call also gets its environment ready), so a local pool is sized for the
    workers. A warm-up that fails costs nothing but its cold start later; the init call is retried."""
    started, run = time.perf_counter(), plan.run
    warmup = Warmup(trainable=plan.config.training.trainable, batch_size=worker_hyper(plan.config.training).batch_size)
    event = InitRequest(action="init", model=plan.config.model, seed=plan.config.training.seed,
                        output_key=run.global_key(0), init_from=plan.init_from,
                        warmup=warmup).model_dump(mode="json")
    warm = WarmRequest(action="warm", model=plan.config.model, warmup=warmup).model_dump(mode="json")
    calls = list(invoker.map("train", [event] + [warm] * (len(plan.shard_parts) - 1)))
    init_calls = [next(inv for inv in calls if inv.index == 0)]
    tick(init_calls[0])
    reply, problem = _init_reply(init_calls[0])
    if problem and options.retries > 0:
        def seen(inv: Invocation) -> None:
            init_calls.append(inv)
            tick(inv)

        done, errors = invoke_for_replies(invoker, "train", [event], options.retries - 1, InitResponse, seen)
        reply, problem = done.get(0), (errors[0][1] if errors else None)
    if problem or reply is None:
        run.store.delete(run.config_key)   # no round made: the run name stays free for the next try
        raise TrainingFailed(f"creating the initial weights failed: {problem}")
    warm_calls = [inv for inv in calls if inv.index != 0]
    run.commit_round(0, RoundRecord(
        kind="init", workers=0, workers_ok=0, train=None, val=None, parameters=reply.parameters, epochs=0.0,
        wall_seconds=round(time.perf_counter() - started, 3),
        lambda_seconds=round(max([sum(inv.lambda_seconds for inv in init_calls)] +
                                 [inv.lambda_seconds for inv in warm_calls]), 3),
        gb_seconds=summarize(init_calls + warm_calls).gb_seconds, completed_at=now_iso()))


def _init_reply(inv: Invocation) -> tuple[InitResponse | None, str | None]:
    """The init call's reply, or why it failed (judged as every retried call is)."""
    if not inv.ok:
        return None, inv.error or "failed"
    return judged_reply(inv.payload, InitResponse)


def _average(invoker: Invoker, plan: Plan, options: TrainOptions, round_: int, results: dict[int, TrainResponse],
             seen: Callable[[Invocation], None]) -> AggregationRecord:
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
                               precision=training.optimizer_precision, fan_in=training.tree_fan_in,
                               seen=seen).as_record()
    except (AggregationFailed, ValueError) as err:
        raise TrainingFailed(f"round {round_}: cannot average the workers' results: {err}. The last completed "
                             f"round is {round_ - 1}: fix the cause and continue with --resume (if a worker "
                             "diverged, start a new --run with a lower --lr)") from err


@dataclass
class AveragedRound:
    """A round whose global weights are stored: its workers and aggregation, waiting for its score."""

    workers: RoundWorkers
    aggregation: AggregationRecord
    aggregate_calls: list[Invocation]
    averaged_at: float
    traffic: Traffic        # through the orchestrator, from the workers' start to the aggregation's end
    epochs: float | None


def _aggregate(invoker: Invoker, meter: Meter, plan: Plan, options: TrainOptions, workers: RoundWorkers,
               epochs_before: float) -> AveragedRound:
    """The round's global weights from its workers' results."""
    round_ = workers.round
    calls: list[Invocation] = []
    aggregation = _average(invoker, plan, options, round_, workers.results, calls.append)
    examples = sum(r.num_examples for r in workers.results.values())
    return AveragedRound(workers, aggregation, calls, time.perf_counter(), meter.snapshot() - workers.traffic_before,
                         round(epochs_before + examples / plan.train_images, 4))


def _score_and_commit(invoker: Invoker, plan: Plan, options: TrainOptions, averaged: AveragedRound,
                      last: bool) -> RoundRecord:
    """On the evaluator's thread: score the round's weights, then commit it. Its evaluation ran beside the next
    round's workers, so only the last round's adds to the run's time on Lambda."""
    workers, run = averaged.workers, plan.run
    started = time.perf_counter()
    val, eval_calls = evaluate(invoker, plan, run.global_key(workers.round), options.retries,
                               eval_images(plan, options, workers.round))
    calls = workers.calls + averaged.aggregate_calls + eval_calls
    record = _round_record(workers, val, averaged.averaged_at, time.perf_counter() - started, last)
    record.gb_seconds = round(summarize(calls).gb_seconds, 3)
    record.aggregation = averaged.aggregation
    record.transfer = _transfer_record(calls, averaged.traffic)
    record.epochs = averaged.epochs
    _lambda_times(record, workers, averaged.aggregation, (val.lambda_seconds or 0.0) if val and last else 0.0)
    run.commit_round(workers.round, record)
    if not options.keep_worker_weights:
        run.delete_worker_weights(workers.round)
    if plan.config.training.worker_optimizer == "own" and workers.round > 1:
        run.delete_worker_states(workers.round - 1)   # resuming needs only the last committed round's
    return record


def previous_epochs(last: RoundRecord | None, plan: Plan) -> float:
    """Epochs of data done by the `last` committed round: from its record (older runs' records lack it:
    estimated)."""
    if last is None or last.round <= 0:
        return 0.0
    return float(last.epochs) if last.epochs is not None else last.round * plan.epochs_per_round


def _lambda_times(record: RoundRecord, workers: RoundWorkers, aggregation: AggregationRecord,
                  evaluate: float) -> None:
    """The round's time on Lambda: its slowest worker (attempts one after another) plus its serial work, the
    aggregation and, in the last round only, its evaluation (`evaluate`).

    Local invoker: each invocation's projected time (orchestrator.invokers.projection); Lambda: measured.
    The training share is the slowest worker's own training time, projected from its CPU time likewise.
    """
    slowest = workers.lambda_seconds
    aggregate = aggregation.lambda_seconds or 0.0
    total = slowest + aggregate + evaluate
    projected = any("projected_ms" in inv.extra for inv in workers.calls)
    training = max((training_seconds(r, projected) for r in workers.results.values()), default=0.0)
    record.lambda_seconds = round(total, 3)
    record.lambda_phase_seconds = LambdaPhases(workers=round(slowest, 3), aggregate=aggregate,
                                               evaluate=round(evaluate, 3))
    record.lambda_train_share = round(min(1.0, training / total), 4) if total > 0 else None


def training_seconds(result: TrainResponse, projected: bool) -> float:
    """A worker's training time on Lambda: projected from its CPU time (local invoker), else as measured."""
    if not projected or result.train_cpu_seconds is None:
        return result.train_seconds
    return projected_ms("train", result.train_cpu_seconds * 1000, function_spec("train").memory_mb) / 1000


def _transfer_record(records: list[Invocation], traffic: Traffic) -> TransferRecord:
    """What went through the orchestrator this round: bytes each way, store requests. A round's own commit falls
    in the next round's (it runs beside that round's workers); the last round's in none."""
    down, up = transfer_bytes(records, traffic)
    return TransferRecord(bytes_down=down, bytes_up=up, store_requests=traffic.requests)


def _round_record(workers: RoundWorkers, val: ValScore | None, averaged_at: float, evaluated: float,
                  last: bool) -> RoundRecord:
    """The round's record; its bill, aggregation and transfer are filled in once known.

    Its wall time here: its workers and aggregation, and in the last round its evaluation (the others ran beside
    the next round's workers)."""
    results, errors = workers.results, workers.errors
    wall = averaged_at - workers.started + (evaluated if last else 0.0)
    train_max = max(r.train_seconds for r in results.values())
    return RoundRecord(
        round=workers.round, kind="round", workers=workers.events, workers_ok=len(results),
        worker_results=[r.model_dump(mode="json") for r in results.values()],
        failed_workers=[FailedWorker(worker=w, attempts=a, error=e) for w, (a, e) in sorted(errors.items())],
        train=TrainScore(examples=sum(r.num_examples for r in results.values()),
                         **weighted_metrics((r.model_dump(), r.num_examples) for r in results.values())),
        val=val,
        wall_seconds=round(wall, 3), gb_seconds=0.0,
        phase_seconds=PhaseSeconds(workers=round(workers.ended - workers.started, 3),
                                   average=round(averaged_at - workers.ended, 3), evaluate=round(evaluated, 3)),
        train_share=round(train_max / wall, 4) if wall > 0 else None,
        completed_at=now_iso(),
    )
