"""A round's aggregation as a tree of partial weighted sums, in any process: numpy only.

Why a tree: one process that reads N workers' results reads them one after another, so
aggregation time grows with N. Here level 0 sums consecutive groups of FAN_IN workers
(weights x examples, in float64), each level above sums FAN_IN partial sums of the level
below, and the root divides by the total: with every node an invocation and the nodes of
a level running at once, the time grows with log N.

The summation order is fixed once, by `plan_tree(N)`, whoever computes it: the train
function's ``aggregate`` action (`run_aggregate`, one node per call, partial sums through
the store) or the orchestrator in one process (`mean_by_tree`, partial sums in memory).
Both do the same float64 additions in the same order, and both round a partial sum to the
weights' own dtype where it leaves a node (`as_stored`: the file holds float32 weights as
float32, so the level above reads no more than a leaf does), so the global weights are the
same bytes whichever engine ran, and a resumed run stays bit-identical. Up to FAN_IN workers
the tree is a single node, which adds them in worker order exactly as dlpipe.train.averaging
always has; above, each level rounds once more (a relative 6e-8 in float32, far below what
one step of training changes).
"""

from __future__ import annotations

import io
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import numpy as np

from dlpipe.train.averaging import AveragingError, PartialSum, WeightedAverage
from dlpipe.train.outer import OuterOptimizer, outer_step
from dlpipe.train.weights import CheckpointError, weights_from_bytes, weights_to_bytes
from dlpipe.wire import AggregateRequest, AggregateResponse, AggregateSource, OuterStep

FAN_IN = 16          # sources per node: 256 workers are two levels, 4,096 three
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


def as_stored(partial: PartialSum) -> PartialSum:
    """The partial sum as the level above reads it: each sum rounded to its weights' dtype (then float64 again)."""
    sums = [np.asarray(s, d).astype(np.float64) for s, d in zip(partial.sums, partial.dtypes, strict=True)]
    return PartialSum(sums, list(partial.dtypes), partial.total_examples, partial.contributions)


def partial_to_bytes(partial: PartialSum) -> bytes:
    """A partial sum as .npz: the sums in their weights' dtypes, the dtypes, examples and workers (no pickle)."""
    buffer = io.BytesIO()
    arrays = {f"s{i:04d}": np.asarray(s, d) for i, (s, d) in enumerate(zip(partial.sums, partial.dtypes,
                                                                           strict=True))}
    arrays["dtypes"] = np.array([np.dtype(d).str for d in partial.dtypes])
    arrays["counts"] = np.array([partial.total_examples, partial.contributions], np.int64)
    # numpy's stubs read the first keyword as allow_pickle
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def partial_from_bytes(data: bytes, what: str) -> PartialSum:
    """The inverse of `partial_to_bytes`, sums in float64: what `as_stored` gives of the partial that was written."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            names = sorted(n for n in archive.files if n.startswith("s"))
            dtypes = [np.dtype(str(d)) for d in archive["dtypes"]]
            examples, contributions = (int(c) for c in archive["counts"])
            sums = [archive[n] for n in names]
    except Exception as err:
        raise CheckpointError(f"{what} is not a readable partial sum ({type(err).__name__}: {err})") from err
    if [s.dtype for s in sums] != dtypes or not all(np.issubdtype(d, np.floating) for d in dtypes):
        raise CheckpointError(f"{what} is not a partial sum: arrays {[str(s.dtype) for s in sums][:5]} for "
                              f"dtypes {[str(d) for d in dtypes][:5]}")
    return PartialSum([s.astype(np.float64) for s in sums], dtypes, examples, contributions)


def mean_by_tree(load: Callable[[int], Sequence[np.ndarray]], examples: Sequence[int], names: Sequence[str],
                 fan_in: int = FAN_IN) -> list[np.ndarray]:
    """The tree's result in this process: `load(i)` gives source i's weights when its leaf needs them.

    Depth first, so memory is one running sum per level and one source's weights.
    """
    levels = plan_tree(len(examples), fan_in)

    def node(level: int, index: int) -> WeightedAverage:
        total = WeightedAverage()
        for child in levels[level][index]:
            if level == 0:
                total.add(load(child), examples[child], source=names[child])
            else:
                total.add_partial(as_stored(node(level - 1, child).partial()), source=f"node {level - 1}.{child}")
        return total

    return node(len(levels) - 1, 0).result()


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


def apply_outer(store, outer: OuterStep, average: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int, int]:
    """The root's outer step (dlpipe.train.outer): (new global weights, bytes read, bytes written).

    The new momentum is stored before the weights are, as a round commits its state first.
    """
    previous_bytes = store.get(outer.previous_key)
    read = len(previous_bytes)
    buffer = None
    if outer.momentum_key:
        momentum_bytes = store.get(outer.momentum_key)
        read += len(momentum_bytes)
        buffer = weights_from_bytes(momentum_bytes, f"the outer momentum {outer.momentum_key!r}")
    optimizer = OuterOptimizer(outer.learning_rate, outer.momentum)
    new, momentum = outer_step(optimizer, weights_from_bytes(previous_bytes, repr(outer.previous_key)), average,
                               buffer)
    written = 0
    if momentum is not None:
        data = weights_to_bytes(momentum)
        store.put(outer.output_momentum_key, data)
        written = len(data)
    return new, read, written


def run_aggregate(request: AggregateRequest, store, ahead: int = READ_AHEAD) -> AggregateResponse:
    """One node of one tree (the weights' or the optimizer state's): its sources' weighted sum.

    At the root, `request.outer` turns the workers' average into the new global weights.
    """
    started = time.monotonic()
    counter = {"gets": 0, "read": 0, "puts": 0, "written": 0}
    total = _sum_sources(store, request.sources, [s.weights_key for s in request.sources], request.partial_sources,
                         counter, ahead)
    if not request.final:
        data = partial_to_bytes(total.partial())
    elif request.outer is not None:
        weights, read, written = apply_outer(store, request.outer, total.result())
        counter["gets"] += 1 + bool(request.outer.momentum_key)
        counter["read"] += read
        counter["puts"] += bool(written)
        counter["written"] += written
        data = weights_to_bytes(weights)
    else:
        data = weights_to_bytes(total.result(), request.precision)
    store.put(request.weights_key, data)
    counter["puts"] += 1
    counter["written"] += len(data)
    return AggregateResponse(weights_key=request.weights_key, final=request.final, examples=total.total_examples,
                             contributions=total.contributions, gets=counter["gets"], puts=counter["puts"],
                             bytes_read=counter["read"], bytes_written=counter["written"],
                             seconds=round(time.monotonic() - started, 3))
