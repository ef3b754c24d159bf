"""A round's aggregation as a tree of partial weighted sums, in any process: numpy only.

Why a tree: one process that reads N workers' results reads them one after another, so
aggregation time grows with N. Here level 0 sums consecutive groups of `fan_in` workers
(weights x examples, in float64), each level above sums `fan_in` partial sums of the level
below, and the root divides by the total: with every node an invocation and the nodes of
a level running at once, the time grows with log N. `best_fan_in` picks the tree with the
least serial work for N (a run stores its choice).

The summation order is fixed once, by `plan_tree(N, fan_in)`, and every node is one call of
`run_aggregate`, whoever runs it: the train function's ``aggregate`` action, or the
orchestrator in its own process (the local engine). Both read and write the same partial
sums through the store, each rounded where it leaves a node to the tree's precision (the
weights' own float32, or bfloat16 for an optimizer state's tree), so the global weights are
the same bytes whichever engine ran, and a resumed run stays bit-identical. Up to `fan_in`
workers the tree is a single node, which adds them in worker order exactly as
dlpipe.train.averaging always has; above, each level rounds once more (a relative 6e-8 in
float32, far below what one step of training changes).
"""

from __future__ import annotations

import io
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import numpy as np

from dlpipe.train.averaging import AveragingError, PartialSum, WeightedAverage
from dlpipe.train.outer import OuterOptimizer, outer_step
from dlpipe.train.weights import CheckpointError, loaded_array, stored_arrays, weights_from_bytes, weights_to_bytes
from dlpipe.wire import AggregateRequest, AggregateResponse, AggregateSource, OuterStep, Precision

FAN_IN = 16          # sources per node at most (and of runs stored before the fan-in was chosen)
READ_AHEAD = 4       # reads in flight while a node sums: S3 serves one connection at ~70 MB/s


def plan_tree(count: int, fan_in: int = FAN_IN) -> list[list[range]]:
    """The nodes level by level, each a range of the level below's outputs (level 0: of the workers, in order).

    The last level holds one node, the root; up to `fan_in` workers it is the only node.
    """
    if count < 1 or fan_in < 2:
        raise ValueError(f"a tree needs at least one source and a fan-in of 2 or more, not {count} and {fan_in}")
    levels: list[list[range]] = []
    width = count
    while not levels or width > 1:
        levels.append([range(start, min(start + fan_in, width)) for start in range(0, width, fan_in)])
        width = len(levels[-1])
    return levels


def tree_cost(levels: list[list[range]]) -> int:
    """A tree's serial work, in reads of one source: each level its largest node's reads, one write and a call."""
    return sum(max(len(node) for node in level) + 2 for level in levels)


def best_fan_in(count: int, most: int = FAN_IN) -> int:
    """The fan-in (2 to `most`) whose tree for `count` sources has the least serial work; of equals, the fewest
    levels, then the largest fan-in (`most` whenever one node is best: 8 workers get 16, 16 workers get 4)."""
    return min(range(most, 1, -1), key=lambda f: (tree_cost(plan_tree(count, f)), len(plan_tree(count, f))))


def partial_to_bytes(partial: PartialSum, precision: Precision = "float32") -> bytes:
    """A partial sum as .npz: the sums in their weights' dtypes (float32 ones as bfloat16 if asked, as
    dlpipe.train.weights stores them), the dtypes, examples and workers (no pickle)."""
    buffer = io.BytesIO()
    arrays = stored_arrays([np.asarray(s, d) for s, d in zip(partial.sums, partial.dtypes, strict=True)], "s",
                           precision)
    arrays["dtypes"] = np.array([np.dtype(d).str for d in partial.dtypes])
    arrays["counts"] = np.array([partial.total_examples, partial.contributions], np.int64)
    np.savez(buffer, **arrays)  # type: ignore[arg-type]   # numpy's stubs read a keyword as allow_pickle
    return buffer.getvalue()


def partial_from_bytes(data: bytes, what: str) -> PartialSum:
    """The inverse of `partial_to_bytes`, sums in float64 (as written: rounded to their stored precision)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            names = sorted((n for n in archive.files if n[0] in "sb" and n[1:].isdigit()), key=lambda n: n[1:])
            dtypes = [np.dtype(str(d)) for d in archive["dtypes"]]
            examples, contributions = (int(c) for c in archive["counts"])
            sums = [loaded_array(n, archive[n]) for n in names]
    except Exception as err:
        raise CheckpointError(f"{what} is not a readable partial sum ({type(err).__name__}: {err})") from err
    if [s.dtype for s in sums] != dtypes or not all(np.issubdtype(d, np.floating) for d in dtypes):
        raise CheckpointError(f"{what} is not a partial sum: arrays {[str(s.dtype) for s in sums][:5]} for "
                              f"dtypes {[str(d) for d in dtypes][:5]}")
    return PartialSum([s.astype(np.float64) for s in sums], dtypes, examples, contributions)


def _read_in_order(store, keys: Sequence[str], ahead: int) -> Iterator[bytes]:
    """Each key's bytes in order, with up to `ahead` reads in flight: summing overlaps the next reads."""
    with ThreadPoolExecutor(max_workers=max(1, ahead), thread_name_prefix="aggregate-read") as pool:
        remaining = iter(keys)
        pending = deque(pool.submit(store.get, key) for key in islice(remaining, max(1, ahead)))
        while pending:
            data = pending.popleft().result()
            following = next(remaining, None)
            if following is not None:
                pending.append(pool.submit(store.get, following))
            yield data


def _sum_sources(store, sources: Sequence[AggregateSource], keys: Sequence[str], partial_sources: bool,
                 counter: dict, ahead: int) -> WeightedAverage:
    total = WeightedAverage()
    for source, key, data in zip(sources, keys, _read_in_order(store, keys, ahead), strict=True):
        counter["gets"] += 1
        counter["read"] += len(data)
        what = f"{source.name} ({key!r})"
        if not partial_sources:
            total.add(weights_from_bytes(data, what), source.examples, source=source.name)
            continue
        partial = partial_from_bytes(data, what)
        if partial.total_examples != source.examples:
            raise AveragingError(f"partial sum {what} holds {partial.total_examples} examples, the call that "
                                 f"wrote it reported {source.examples}: a file left by another attempt?")
        total.add_partial(partial, source=source.name)
    return total


def add_base(base: Sequence[np.ndarray], mean_difference: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The workers' average from the weights they started from and their mean difference (float64 sum)."""
    if len(base) != len(mean_difference) or any(np.shape(b) != np.shape(d) for b, d in
                                                 zip(base, mean_difference, strict=False)):
        raise AveragingError("the workers' differences do not fit the global weights they are from")
    return [(np.asarray(b, np.float64) + np.asarray(d, np.float64)).astype(np.asarray(b).dtype)
            for b, d in zip(base, mean_difference, strict=True)]


def apply_outer(store, outer: OuterStep, average: Sequence[np.ndarray],
                previous: Sequence[np.ndarray] | None = None) -> tuple[list[np.ndarray], int, int]:
    """The root's outer step (dlpipe.train.outer): (new global weights, bytes read, bytes written).

    previous: the previous global weights if the root already read them (else read from outer.previous_key).
    The new momentum is stored before the weights are, as a round commits its state first.
    """
    read = 0
    if previous is None:
        previous_bytes = store.get(outer.previous_key)
        read = len(previous_bytes)
        previous = weights_from_bytes(previous_bytes, repr(outer.previous_key))
    buffer = None
    if outer.momentum_key:
        momentum_bytes = store.get(outer.momentum_key)
        read += len(momentum_bytes)
        buffer = weights_from_bytes(momentum_bytes, f"the outer momentum {outer.momentum_key!r}")
    optimizer = OuterOptimizer(outer.learning_rate, outer.momentum)
    new, momentum = outer_step(optimizer, previous, average, buffer)
    written = 0
    if momentum is not None:
        data = weights_to_bytes(momentum)
        store.put(outer.output_momentum_key, data)
        written = len(data)
    return new, read, written


def _global_weights(request: AggregateRequest, store, mean: list[np.ndarray], counter: dict) -> list[np.ndarray]:
    """The root's new global weights: the mean (of differences: added to their base), then the outer step."""
    base = None
    if request.base_key is not None:
        data = store.get(request.base_key)
        counter["gets"] += 1
        counter["read"] += len(data)
        base = weights_from_bytes(data, f"the global weights {request.base_key!r}")
        mean = add_base(base, mean)
    if request.outer is None:
        return mean
    weights, read, written = apply_outer(store, request.outer, mean, base)
    counter["gets"] += (base is None) + bool(request.outer.momentum_key)
    counter["read"] += read
    counter["puts"] += bool(written)
    counter["written"] += written
    return weights


def run_aggregate(request: AggregateRequest, store, ahead: int = READ_AHEAD) -> AggregateResponse:
    """One node of one tree (the weights' or the optimizer state's): its sources' weighted sum.

    At the root, `request.outer` turns the workers' average into the new global weights.
    """
    started = time.monotonic()
    counter = {"gets": 0, "read": 0, "puts": 0, "written": 0}
    total = _sum_sources(store, request.sources, [s.weights_key for s in request.sources], request.partial_sources,
                         counter, ahead)
    if not request.final:
        data = partial_to_bytes(total.partial(), request.precision)
    elif request.outer is not None or request.base_key is not None:
        data = weights_to_bytes(_global_weights(request, store, total.result(), counter))
    else:
        data = weights_to_bytes(total.result(), request.precision)
    store.put(request.weights_key, data)
    counter["puts"] += 1
    counter["written"] += len(data)
    return AggregateResponse(weights_key=request.weights_key, final=request.final, examples=total.total_examples,
                             contributions=total.contributions, gets=counter["gets"], puts=counter["puts"],
                             bytes_read=counter["read"], bytes_written=counter["written"],
                             seconds=round(time.monotonic() - started, 3))
