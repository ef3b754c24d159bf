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
    label: str = ""                  # how errors name the tree's nodes beside the weights'


def round_trees(run: TrainingRun, round_: int, results: dict[int, TrainResponse], outer: OuterStep | None,
                average_optimizer: bool, precision: Precision) -> list[Tree]:
    """The weights' tree, and the optimizer state's beside it when the workers' states are averaged."""
    ordered = sorted(results.items())
    trees = [Tree(run.global_key(round_), [AggregateSource(name=f"worker {w}", weights_key=r.weights_key,
                                                           examples=r.num_examples) for w, r in ordered], outer)]
    if average_optimizer and all(r.optimizer_key for _, r in ordered):
        trees.append(Tree(run.optimizer_key(round_),
                          [AggregateSource(name=f"worker {w} optimizer state", weights_key=str(r.optimizer_key),
                                           examples=r.num_examples) for w, r in ordered],
                          precision=precision, label=" (optimizer state)"))
    return trees


def aggregate_round(run: TrainingRun, round_: int, results: dict[int, TrainResponse], engine: str,
                    invoker: Invoker, retries: int, outer: OuterStep | None = None,
                    average_optimizer: bool = True, precision: Precision = "float32") -> Aggregation:
    """Write the round's optimizer state, outer state and global weights from the workers' `results`.

    average_optimizer False: the workers keep their own Adam state; only the weights are aggregated.
    precision: how the averaged optimizer state is stored (the run's, as its workers store theirs).
    """
    started = time.perf_counter()
    trees = round_trees(run, round_, results, outer, average_optimizer, precision)
    levels = plan_tree(len(results))
    calls, on_lambda = 0, 0.0
    try:
        if engine == "local":
            on_lambda = _aggregate_here(run, trees)
        else:
            calls, on_lambda = _aggregate_in_cloud(run, round_, trees, invoker, retries)
    except (AveragingError, CheckpointError, StoreError, ValueError) as err:
        raise AggregationFailed(str(err)) from err
    return Aggregation(engine, len(levels), len(trees) * sum(len(level) for level in levels), calls,
                       time.perf_counter() - started, on_lambda)


def _aggregate_here(run: TrainingRun, trees: list[Tree]) -> float:
    """The trees in this process, the optimizer state's first (as a round commits it first); returns the time
    the aggregation would take on Lambda: the trees' root calls side by side, as the cloud engine runs them
    (each projected from this thread's CPU time and the bytes it moved, as the local invoker projects calls)."""
    spec, projected = function_spec("train"), []
    for tree in reversed(trees):
        cpu, moved = time.thread_time(), STORE_BYTES.total

        def load(i: int, tree: Tree = tree) -> list:
            return run.load_weights(tree.sources[i].weights_key)
        mean = mean_by_tree(load, [s.examples for s in tree.sources], [s.name for s in tree.sources])
        if tree.outer is not None:
            mean = apply_outer(run.store, tree.outer, mean)[0]
        run.save_weights(tree.output_key, mean, tree.precision)
        projected.append(projected_seconds(time.thread_time() - cpu, spec.memory_mb,
                                           max(0, STORE_BYTES.total - moved)))
    return max(projected)


def _node_events(run: TrainingRun, round_: int, tree: Tree, sources: list[AggregateSource], groups: list[range],
                 level: int, final: bool) -> list[dict]:
    """One level of one tree; a final level writes the tree's output, the others partial sums."""
    events = []
    for index, group in enumerate(groups):
        if final:
            output = tree.output_key
        elif tree.label:
            output = run.partial_optimizer_key(round_, level, index)
        else:
            output = run.partial_sum_key(round_, level, index)
        events.append(AggregateRequest(action="aggregate", sources=[sources[i] for i in group],
                                       partial_sources=level > 0, final=final, weights_key=output,
                                       outer=tree.outer if final else None,
                                       precision=tree.precision if final else "float32").model_dump(mode="json"))
    return events


def _aggregate_in_cloud(run: TrainingRun, round_: int, trees: list[Tree], invoker: Invoker,
                        retries: int) -> tuple[int, float]:
    """Each level's nodes as one batch of aggregate invocations; the level above reads what they wrote.

    The optimizer state (two thirds of the bytes in float32, with Adam) has a tree of its own beside the
    weights', level for level in the same batches, so a level takes as long as its slowest node, not their
    sum. Returns the calls made and the Lambda time: the slowest call of each level, added up.
    """
    calls, slowest = 0, 0.0

    def count(inv: Invocation) -> None:
        nonlocal calls, slowest
        calls += 1
        slowest = max(slowest, inv.lambda_seconds)

    sources = [tree.sources for tree in trees]
    levels = plan_tree(len(trees[0].sources))
    on_lambda = 0.0
    for level, groups in enumerate(levels):
        slowest, final = 0.0, level == len(levels) - 1
        events = [e for tree, tree_sources in zip(trees, sources, strict=True)
                  for e in _node_events(run, round_, tree, tree_sources, groups, level, final)]
        done, errors = invoke_for_replies(invoker, "train", events, retries, AggregateResponse, count)
        if errors:
            reasons = "; ".join(f"node {level}.{i % len(groups)}{trees[i // len(groups)].label}: "
                                f"{error} (after {attempts} attempts)"
                                for i, (attempts, error) in sorted(errors.items()))
            raise AggregationFailed(f"the aggregate action failed: {reasons}")
        for position in range(len(trees)):
            replies = [done[position * len(groups) + i] for i in range(len(groups))]
            sources[position] = [AggregateSource(name=f"node {level}.{i}", weights_key=r.weights_key,
                                                 examples=r.examples) for i, r in enumerate(replies)]
        on_lambda += slowest
    return calls, on_lambda
