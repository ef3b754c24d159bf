"""A round's worker phase: every worker one train invocation, failed ones retried, each from the global
weights (and the averaged or its own Adam state) on its shard. Orchestration only, no ML.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from dlpipe.wire import TrainRequest, TrainResponse
from orchestrator.invokers.base import Invocation, Invoker
from orchestrator.invokers.retry import invoke_for_replies
from orchestrator.traffic import Meter, Traffic
from orchestrator.training.hyperparams import worker_hyper
from orchestrator.training.plan import Plan, TrainingFailed, TrainOptions


@dataclass
class RoundWorkers:
    """A round's worker phase: who succeeded, who failed, their invocations and time."""

    round: int
    events: int
    results: dict[int, TrainResponse]
    errors: dict[int, tuple[int, str]]
    calls: list[Invocation]
    started: float
    ended: float
    traffic_before: Traffic

    @property
    def lambda_seconds(self) -> float:
        """The slowest worker on Lambda, its attempts one after another."""
        per_worker: dict[int, float] = {}
        for inv in self.calls:
            worker = inv.extra.get("event", inv.index)
            per_worker[worker] = per_worker.get(worker, 0.0) + inv.lambda_seconds
        return max(per_worker.values(), default=0.0)


def run_workers(invoker: Invoker, meter: Meter, plan: Plan, options: TrainOptions, round_: int,
                tick: Callable[[Invocation], None], worker_results: list[dict]) -> RoundWorkers:
    """Every worker of `round_`, failed ones retried (`worker_results`: the last round's, for own Adam states)."""
    run = plan.run
    started, traffic_before = time.perf_counter(), meter.snapshot()
    own_states = _own_states(plan, worker_results)
    events = _worker_events(plan, options, round_, own_states)
    calls: list[Invocation] = []

    def retry_event(event: dict, attempt: int) -> dict:
        worker = event["worker"]
        return {**event, "attempt": attempt, "output_key": run.worker_key(round_, worker, attempt),
                "output_optimizer_key": _optimizer_keys(plan, round_, worker, attempt, own_states)[1]}

    def seen(inv: Invocation) -> None:
        calls.append(inv)
        tick(inv)

    done, errors = invoke_for_replies(invoker, "train", events, options.retries, TrainResponse, seen, retry_event,
                                      _check_train)
    return RoundWorkers(round_, len(events), {w: done[w] for w in sorted(done)}, errors, calls, started,
                        time.perf_counter(), traffic_before)


def enough_workers(plan: Plan, options: TrainOptions, workers: RoundWorkers,
                    failures: list[tuple[str, str]]) -> None:
    round_, errors = workers.round, workers.errors
    for w, (attempts, error) in sorted(errors.items()):
        failures.append((f"round {round_} worker {w}", f"{error} (after {attempts} attempts)"))
    if len(workers.results) < plan.min_workers:
        reasons = "; ".join(f"worker {w}: {error}" for w, (_, error) in sorted(errors.items()))
        raise TrainingFailed(
            f"round {round_}: only {len(workers.results)} of {workers.events} workers succeeded (need "
            f"{plan.min_workers}) after {options.retries} retries: {reasons}. The last completed round is "
            f"{round_ - 1} ({plan.run.url(plan.run.global_key(round_ - 1))}). Fix the cause and continue with "
            "--resume, or let a round close on fewer workers with --min-workers.")


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


def _own_states(plan: Plan, worker_results: list[dict]) -> dict[int, str]:
    """Each worker's own Adam state after the last round, as its results name it (its successful attempt's)."""
    if plan.config.training.worker_optimizer != "own":
        return {}
    return {int(r["worker"]): str(r["optimizer_key"]) for r in worker_results if r.get("optimizer_key")}


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
