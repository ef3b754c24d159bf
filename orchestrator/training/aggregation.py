"""Where a round's worker results become its global weights: in this process, or in the cloud.

Both engines run the same nodes of the same trees (dlpipe.train.aggregate: the weights' tree,
and the optimizer state's beside it), level after level, each node one call of
`run_aggregate`, so the weights are the same bytes either way. ``lambda``: each level's nodes
are one batch of the train function's ``aggregate`` action, run at once; the orchestrator
sends and reads only small records. ``local``: this process runs them one after another
against the store (with a remote store every worker's weights and optimizer state cross the
orchestrator's link: ~10 MB per SqueezeNet worker), and projects the time Lambda would take
(each level its slowest node). ``auto``: lambda when the invoker is Lambda, local otherwise.

Partial sums go beside the workers' results (TrainingRun.partial_sum_key), and are deleted
with them once the round is committed.

The outer optimizer (dlpipe.train.outer) is applied once, at the root of the weights' tree
(dlpipe.train.aggregate.apply_outer): its momentum is the run's outer state,
runs/<run>/rounds/<r>/outer.npz, written before the round's global weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from dlpipe.runs.record import AggregationRecord
from dlpipe.runs.run import TrainingRun
from dlpipe.shared.store import STORE_BYTES, StoreError
from dlpipe.train.aggregate import FAN_IN, plan_tree, run_aggregate
from dlpipe.train.averaging import AveragingError
from dlpipe.train.weights import CheckpointError
from dlpipe.wire import AggregateRequest, AggregateResponse, AggregateSource, OuterStep, Precision, TrainResponse
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


@dataclass
class Tree:
    """One tree of a round's aggregation: the weights' (the outer step at its root) or the optimizer state's."""

    output_key: str
    sources: list[AggregateSource]
    outer: OuterStep | None = None
    precision: Precision = "float32"
    optimizer: bool = False          # the optimizer state's tree: its partial sums have keys of their own
    base_key: str | None = None      # the sources are differences from these weights (added back at the root)

    @property
    def label(self) -> str:
        """How errors name the tree's nodes beside the weights'."""
        return " (optimizer state)" if self.optimizer else ""


def round_trees(run: TrainingRun, round_: int, results: dict[int, TrainResponse], outer: OuterStep | None,
                average_optimizer: bool, precision: Precision) -> list[Tree]:
    """The weights' tree, and the optimizer state's beside it when the workers' states are averaged: first,
    as a round commits its state before its weights."""
    ordered = sorted(results.items())
    base = _differences_from(run, round_, results)
    trees = [Tree(run.global_key(round_), [AggregateSource(name=f"worker {w}", weights_key=r.weights_key,
                                                           examples=r.num_examples) for w, r in ordered], outer,
                  precision="bfloat16" if base else "float32", base_key=base)]
    if average_optimizer and all(r.optimizer_key for _, r in ordered):
        trees.insert(0, Tree(run.optimizer_key(round_),
                             [AggregateSource(name=f"worker {w} optimizer state", weights_key=str(r.optimizer_key),
                                              examples=r.num_examples) for w, r in ordered],
                             precision=precision, optimizer=True))
    return trees


def _differences_from(run: TrainingRun, round_: int, results: dict[int, TrainResponse]) -> str | None:
    """The global weights the workers' files are differences from (None: they hold weights); all the same."""
    bases = {r.delta_from for r in results.values()}
    expected = run.global_key(round_ - 1)
    if bases == {None}:
        return None
    if bases != {expected}:
        named = ", ".join(f"worker {w}: {r.delta_from or 'weights'}" for w, r in sorted(results.items()))
        raise AggregationFailed(f"the workers' results must all be differences from {expected!r}, not ({named})")
    return expected


def aggregate_round(run: TrainingRun, round_: int, results: dict[int, TrainResponse], engine: str,
                    invoker: Invoker, retries: int, outer: OuterStep | None = None,
                    average_optimizer: bool = True, precision: Precision = "float32",
                    fan_in: int = FAN_IN, seen: Callable[[Invocation], None] | None = None) -> Aggregation:
    """Write the round's optimizer state, outer state and global weights from the workers' `results`.

    average_optimizer False: the workers keep their own Adam state; only the weights are aggregated.
    precision: how the averaged optimizer state is stored (the run's, as its workers store theirs).
    fan_in: the run's tree (dlpipe.train.aggregate.plan_tree).
    seen: gets each aggregate invocation (the cloud engine's), for the round's bill.
    """
    started = time.perf_counter()
    trees = round_trees(run, round_, results, outer, average_optimizer, precision)
    levels = plan_tree(len(results), fan_in)
    calls, on_lambda = 0, 0.0
    try:
        for level, groups in enumerate(levels):
            events = [e for tree in trees for e in _node_events(run, round_, tree, groups, level, len(levels))]
            if engine == "local":
                replies, slowest = _level_here(run, events)
            else:
                replies, slowest, made = _level_in_cloud(invoker, events, retries, level, trees, seen)
                calls += made
            on_lambda += slowest
            for position, tree in enumerate(trees):
                tree.sources = [AggregateSource(name=f"node {level}.{i}", weights_key=r.weights_key,
                                                examples=r.examples)
                                for i, r in enumerate(replies[position * len(groups):(position + 1) * len(groups)])]
    except (AveragingError, CheckpointError, StoreError, ValueError) as err:
        raise AggregationFailed(str(err)) from err
    return Aggregation(engine, len(levels), len(trees) * sum(len(level) for level in levels), calls,
                       time.perf_counter() - started, on_lambda)


def _node_events(run: TrainingRun, round_: int, tree: Tree, groups: list[range], level: int,
                 height: int) -> list[dict]:
    """One level of one tree; the last level writes the tree's output, the others partial sums."""
    final = level == height - 1
    events = []
    for index, group in enumerate(groups):
        if final:
            output = tree.output_key
        elif tree.optimizer:
            output = run.partial_optimizer_key(round_, level, index)
        else:
            output = run.partial_sum_key(round_, level, index)
        events.append(AggregateRequest(action="aggregate", sources=[tree.sources[i] for i in group],
                                       partial_sources=level > 0, final=final, weights_key=output,
                                       outer=tree.outer if final else None,
                                       base_key=tree.base_key if final else None,
                                       precision=tree.precision).model_dump(mode="json"))
    return events


def _level_here(run: TrainingRun, events: list[dict]) -> tuple[list[AggregateResponse], float]:
    """A level's nodes in this process, one after another, each exactly as the aggregate action runs it; and
    the level's time on Lambda, where its nodes run at once: the slowest node, projected from this thread's
    CPU time and the bytes it moved (as the local invoker projects calls)."""
    spec, replies, slowest = function_spec("train"), [], 0.0
    for event in events:
        cpu, moved = time.thread_time(), STORE_BYTES.total
        replies.append(run_aggregate(AggregateRequest.model_validate(event), run.store))
        slowest = max(slowest, projected_seconds(time.thread_time() - cpu, spec.memory_mb,
                                                 max(0, STORE_BYTES.total - moved)))
    return replies, slowest


def _level_in_cloud(invoker: Invoker, events: list[dict], retries: int, level: int, trees: list[Tree],
                    seen: Callable[[Invocation], None] | None = None) -> tuple[list[AggregateResponse], float, int]:
    """A level's nodes, every tree's, as one batch of aggregate invocations: the level takes as long as its
    slowest call. Returns the replies in order, that time and the calls made (retries included); `seen` gets
    each call."""
    calls, slowest = 0, 0.0

    def count(inv: Invocation) -> None:
        nonlocal calls, slowest
        calls += 1
        slowest = max(slowest, inv.lambda_seconds)
        if seen is not None:
            seen(inv)

    done, errors = invoke_for_replies(invoker, "train", events, retries, AggregateResponse, count)
    if errors:
        per_tree = len(events) // len(trees)
        reasons = "; ".join(f"node {level}.{i % per_tree}{trees[i // per_tree].label}: "
                            f"{error} (after {attempts} attempts)" for i, (attempts, error) in sorted(errors.items()))
        raise AggregationFailed(f"the aggregate action failed: {reasons}")
    return [done[i] for i in range(len(events))], slowest, calls
