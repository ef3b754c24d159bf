"""Where a round's worker results become its global weights: in this process, or in the cloud.

``local``: the orchestrator reads every worker's weights and optimizer state from the store
and sums them here (all of it crosses the orchestrator's link: ~20 MB per SqueezeNet
worker). ``lambda``: the train function's ``aggregate`` action does, one invocation per node
of the tree (dlpipe.train.aggregate), level after level, each level's nodes at once; the
orchestrator sends and reads only small records. ``auto``: lambda when the invoker is
Lambda, local otherwise. Both follow the one tree, so the weights are the same bytes.

Partial sums go beside the workers' results (TrainingRun.partial_sum_key), and are deleted
with them once the round is committed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dlpipe.runs.record import AggregationRecord
from dlpipe.runs.run import TrainingRun
from dlpipe.shared.store import StoreError
from dlpipe.train.aggregate import mean_by_tree, plan_tree
from dlpipe.train.averaging import AveragingError
from dlpipe.train.weights import CheckpointError
from dlpipe.wire import AggregateRequest, AggregateResponse, AggregateSource, TrainResponse
from orchestrator.invokers.base import Invocation, Invoker
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

    def as_record(self) -> AggregationRecord:
        return AggregationRecord(engine=self.engine, levels=self.levels, nodes=self.nodes, calls=self.calls,
                                 seconds=round(self.seconds, 3))


def resolve_engine(choice: str, invoker: Invoker) -> str:
    if choice not in ENGINES:
        raise ValueError(f"--aggregate is one of {', '.join(ENGINES)}, not {choice!r}")
    if choice == "auto":
        return "lambda" if invoker.name == "lambda" else "local"
    return choice


def aggregate_round(run: TrainingRun, round_: int, results: dict[int, TrainResponse], engine: str,
                    invoker: Invoker, retries: int) -> Aggregation:
    """Write the round's optimizer state and global weights: the example-weighted means of `results`."""
    started = time.perf_counter()
    sources = [AggregateSource(name=f"worker {w}", weights_key=r.weights_key, optimizer_key=r.optimizer_key,
                               examples=r.num_examples) for w, r in sorted(results.items())]
    levels = plan_tree(len(sources))
    calls = 0
    try:
        if engine == "local":
            _aggregate_here(run, round_, sources)
        else:
            calls = _aggregate_in_cloud(run, round_, sources, invoker, retries)
    except (AveragingError, CheckpointError, StoreError) as err:
        raise AggregationFailed(str(err)) from err
    return Aggregation(engine, len(levels), sum(len(level) for level in levels), calls, time.perf_counter() - started)


def _aggregate_here(run: TrainingRun, round_: int, sources: list[AggregateSource]) -> None:
    names, examples = [s.name for s in sources], [s.examples for s in sources]
    outputs: list[tuple[str, list[str]]] = [(run.global_key(round_), [s.weights_key for s in sources])]
    if all(s.optimizer_key for s in sources):
        outputs.insert(0, (run.optimizer_key(round_), [str(s.optimizer_key) for s in sources]))
    for output_key, keys in outputs:
        def load(i: int, keys: list[str] = keys) -> list:
            return run.load_weights(keys[i])
        run.save_weights(output_key, mean_by_tree(load, examples, names))


def _node_events(run: TrainingRun, round_: int, sources: list[AggregateSource], groups: list[range], level: int,
                 final: bool) -> list[dict]:
    with_optimizer = all(s.optimizer_key for s in sources)
    events = []
    for index, group in enumerate(groups):
        weights_key = run.global_key(round_) if final else run.partial_sum_key(round_, level, index)
        optimizer_key = ((run.optimizer_key(round_) if final else run.partial_optimizer_key(round_, level, index))
                         if with_optimizer else None)
        events.append(AggregateRequest(action="aggregate", sources=[sources[i] for i in group],
                                       partial_sources=level > 0, final=final, weights_key=weights_key,
                                       optimizer_key=optimizer_key).model_dump(mode="json"))
    return events


def _aggregate_in_cloud(run: TrainingRun, round_: int, sources: list[AggregateSource], invoker: Invoker,
                        retries: int) -> int:
    """Each level's nodes as one batch of aggregate invocations; the level above reads what they wrote."""
    calls = 0

    def count(_: Invocation) -> None:
        nonlocal calls
        calls += 1

    levels = plan_tree(len(sources))
    for level, groups in enumerate(levels):
        events = _node_events(run, round_, sources, groups, level, final=level == len(levels) - 1)
        done, errors = invoke_for_replies(invoker, "train", events, retries, AggregateResponse, count)
        if errors:
            reasons = "; ".join(f"node {level}.{i}: {error} (after {attempts} attempts)"
                                for i, (attempts, error) in sorted(errors.items()))
            raise AggregationFailed(f"the aggregate action failed: {reasons}")
        replies = [done[i] for i in range(len(events))]
        sources = [AggregateSource(name=f"node {level}.{i}", weights_key=r.weights_key, optimizer_key=r.optimizer_key,
                                   examples=r.examples) for i, r in enumerate(replies)]
    return calls
