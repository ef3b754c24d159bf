"""Where a round's worker results become its global weights: in this process, or in the cloud.

``local``: the orchestrator reads every worker's weights and optimizer state from the store
and sums them here (all of it crosses the orchestrator's link: ~20 MB per SqueezeNet
worker). ``lambda``: the train function's ``aggregate`` action does, one invocation per node
of the tree (dlpipe.train.aggregate), level after level, each level's nodes at once; the
orchestrator sends and reads only small records. ``auto``: lambda when the invoker is
Lambda, local otherwise. Both follow the one tree, so the weights are the same bytes.

Partial sums go beside the workers' results (TrainingRun.partial_sum_key), and are deleted
with them once the round is committed.

The outer optimizer (dlpipe.train.outer) is applied once, at the root, by the same function
on either engine (dlpipe.train.aggregate.apply_outer): its momentum is the run's outer state,
runs/<run>/rounds/<r>/outer.npz, written before the round's global weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dlpipe.runs.record import AggregationRecord
from dlpipe.runs.run import TrainingRun
from dlpipe.shared.store import STORE_BYTES, StoreError
from dlpipe.train.aggregate import apply_outer, mean_by_tree, plan_tree
from dlpipe.train.averaging import AveragingError
from dlpipe.train.weights import CheckpointError
from dlpipe.wire import AggregateRequest, AggregateResponse, AggregateSource, OuterStep, TrainResponse
from orchestrator.functions import function_spec
from orchestrator.invokers.base import Invocation, Invoker
from orchestrator.invokers.projection import projected_seconds
from orchestrator.invokers.retry import invoke_for_replies

ENGINES = ("auto", "local", "lambda")


class AggregationFailed(RuntimeError):
    """The round's results could not be aggregated; the message says which node or worker and why."""


@dataclass
class Aggregation:
    """How a round was aggregated: kept in its record."""

    engine: str
    levels: int
    nodes: int
    calls: int          # aggregate invocations, retries included (0 in this process)
    seconds: float
    lambda_seconds: float = 0.0   # on Lambda: the slowest node of each level, level after level (0 here)

    def as_record(self) -> AggregationRecord:
        return AggregationRecord(engine=self.engine, levels=self.levels, nodes=self.nodes, calls=self.calls,
                                 seconds=round(self.seconds, 3), lambda_seconds=round(self.lambda_seconds, 3))


def resolve_engine(choice: str, invoker: Invoker) -> str:
    if choice not in ENGINES:
        raise ValueError(f"--aggregate is one of {', '.join(ENGINES)}, not {choice!r}")
    if choice == "auto":
        return "lambda" if invoker.name == "lambda" else "local"
    return choice


def outer_request(run: TrainingRun, round_: int, learning_rate: float, momentum: float) -> OuterStep | None:
    """The root's outer step for `round_`, or None for the plain average (outer lr 1, momentum 0)."""
    if learning_rate == 1.0 and momentum == 0.0:
        return None
    previous_momentum = run.outer_key(round_ - 1)
    return OuterStep(learning_rate=learning_rate, momentum=momentum, previous_key=run.global_key(round_ - 1),
                     momentum_key=previous_momentum if round_ > 1 and run.store.exists(previous_momentum) else None,
                     output_momentum_key=run.outer_key(round_))


def aggregate_round(run: TrainingRun, round_: int, results: dict[int, TrainResponse], engine: str,
                    invoker: Invoker, retries: int, outer: OuterStep | None = None,
                    average_optimizer: bool = True) -> Aggregation:
    """Write the round's optimizer state, outer state and global weights from the workers' `results`.

    average_optimizer False: the workers keep their own Adam state; only the weights are aggregated.
    """
    started = time.perf_counter()
    sources = [AggregateSource(name=f"worker {w}", weights_key=r.weights_key,
                               optimizer_key=r.optimizer_key if average_optimizer else None,
                               examples=r.num_examples) for w, r in sorted(results.items())]
    levels = plan_tree(len(sources))
    trees = 2 if all(s.optimizer_key for s in sources) else 1     # the optimizer state's beside the weights'
    calls, on_lambda = 0, 0.0
    try:
        if engine == "local":
            on_lambda = _aggregate_here(run, round_, sources, outer)
        else:
            calls, on_lambda = _aggregate_in_cloud(run, round_, sources, invoker, retries, outer)
    except (AveragingError, CheckpointError, StoreError, ValueError) as err:
        raise AggregationFailed(str(err)) from err
    return Aggregation(engine, len(levels), trees * sum(len(level) for level in levels), calls,
                       time.perf_counter() - started, on_lambda)


def _aggregate_here(run: TrainingRun, round_: int, sources: list[AggregateSource], outer: OuterStep | None) -> float:
    """The tree in this process; returns the time the aggregation would take on Lambda: the optimizer
    state's and the weights' root calls side by side, as the cloud engine runs them (each projected from
    this thread's CPU time and the bytes it moved, as the local invoker projects calls)."""
    names, examples = [s.name for s in sources], [s.examples for s in sources]
    outputs: list[tuple[str, list[str]]] = [(run.global_key(round_), [s.weights_key for s in sources])]
    if all(s.optimizer_key for s in sources):
        outputs.insert(0, (run.optimizer_key(round_), [str(s.optimizer_key) for s in sources]))
    spec, projected = function_spec("train"), []
    for output_key, keys in outputs:
        cpu, moved = time.thread_time(), STORE_BYTES.total

        def load(i: int, keys: list[str] = keys) -> list:
            return run.load_weights(keys[i])
        mean = mean_by_tree(load, examples, names)
        if outer is not None and output_key == run.global_key(round_):
            mean = apply_outer(run.store, outer, mean)[0]
        run.save_weights(output_key, mean)
        projected.append(projected_seconds(time.thread_time() - cpu, spec.memory_mb,
                                           max(0, STORE_BYTES.total - moved)))
    return max(projected)


def _node_events(run: TrainingRun, round_: int, sources: list[AggregateSource], groups: list[range], level: int,
                 final: bool, outer: OuterStep | None, optimizer: bool = False) -> list[dict]:
    """One level of one tree: the weights' (`optimizer` False; the outer step at its root) or the optimizer
    state's, whose sources name the state as their weights (the action averages both alike)."""
    events = []
    for index, group in enumerate(groups):
        if optimizer:
            output = run.optimizer_key(round_) if final else run.partial_optimizer_key(round_, level, index)
        else:
            output = run.global_key(round_) if final else run.partial_sum_key(round_, level, index)
        events.append(AggregateRequest(action="aggregate", sources=[sources[i] for i in group],
                                       partial_sources=level > 0, final=final, weights_key=output,
                                       outer=outer if final and not optimizer else None).model_dump(mode="json"))
    return events


def _aggregate_in_cloud(run: TrainingRun, round_: int, sources: list[AggregateSource], invoker: Invoker,
                        retries: int, outer: OuterStep | None) -> tuple[int, float]:
    """Each level's nodes as one batch of aggregate invocations; the level above reads what they wrote.

    The optimizer state (two thirds of the bytes, with Adam) has a tree of its own beside the weights',
    level for level in the same batches, so a level takes as long as its slowest node, not their sum.
    Returns the calls made and the Lambda time: the slowest call of each level, added up.
    """
    calls, slowest = 0, 0.0

    def count(inv: Invocation) -> None:
        nonlocal calls, slowest
        calls += 1
        slowest = max(slowest, inv.lambda_seconds)

    trees = {False: [AggregateSource(name=s.name, weights_key=s.weights_key, examples=s.examples) for s in sources]}
    if all(s.optimizer_key for s in sources):
        trees[True] = [AggregateSource(name=f"{s.name} optimizer state", weights_key=str(s.optimizer_key),
                                       examples=s.examples) for s in sources]
    levels = plan_tree(len(sources))
    on_lambda = 0.0
    for level, groups in enumerate(levels):
        slowest, final = 0.0, level == len(levels) - 1
        events = [e for optimizer, tree in trees.items()
                  for e in _node_events(run, round_, tree, groups, level, final, outer, optimizer)]
        done, errors = invoke_for_replies(invoker, "train", events, retries, AggregateResponse, count)
        if errors:
            reasons = "; ".join(f"node {level}.{i % len(groups)}{' (optimizer state)' if i >= len(groups) else ''}: "
                                f"{error} (after {attempts} attempts)"
                                for i, (attempts, error) in sorted(errors.items()))
            raise AggregationFailed(f"the aggregate action failed: {reasons}")
        for position, optimizer in enumerate(trees):
            replies = [done[position * len(groups) + i] for i in range(len(groups))]
            trees[optimizer] = [AggregateSource(name=f"node {level}.{i}", weights_key=r.weights_key,
                                                examples=r.examples) for i, r in enumerate(replies)]
        on_lambda += slowest
    return calls, on_lambda
