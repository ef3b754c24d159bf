"""Weighted averaging of model weights: the aggregation step of data-parallel training.

Each round every worker starts from the same global weights, trains on its own shard and
returns its weights with the number of examples it trained on; the new global weights are
the example-weighted mean (FedAvg, McMahan et al. 2017; Flower's `aggregate` over
(weights, num_examples) pairs). `WeightedAverage` streams: it keeps one running sum, so
memory is one model's worth (in float64) however many workers there are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


class AveragingError(ValueError):
    """Weights or example counts that cannot be averaged; the message names the problem."""


@dataclass
class PartialSum:
    """A subtree of the aggregation tree (dlpipe.train.aggregate): sums of weights x examples, not yet divided."""

    sums: list[np.ndarray]          # float64
    dtypes: list[np.dtype]          # of the weights that were summed: the mean comes back in them
    total_examples: int
    contributions: int              # workers summed below this point


class WeightedAverage:
    """Accumulate (weights, num_examples) one worker at a time; `result()` is the mean.

    Sums are kept in float64 so the order in which workers are added changes the result
    by far less than float32 resolution; results come back in each array's own dtype.
    """

    def __init__(self) -> None:
        self._sums: list[np.ndarray] | None = None
        self._dtypes: list[np.dtype] = []
        self.total_examples = 0
        self.contributions = 0

    def add(self, weights: Sequence[np.ndarray], num_examples: int, source: str = "") -> None:
        """Add one worker's weights, counted `num_examples` times."""
        who = f" from {source}" if source else ""
        if isinstance(num_examples, (bool, np.bool_)) or not isinstance(num_examples, (int, np.integer)):
            raise AveragingError(f"num_examples{who} must be an integer, got {num_examples!r}")
        if num_examples <= 0:
            raise AveragingError(f"weights{who} were trained on {num_examples} examples; "
                                 "only workers that trained on at least one example can be averaged")
        arrays = [np.asarray(w) for w in weights]
        if self._sums is None:
            if not arrays:
                raise AveragingError(f"weights{who} are an empty list")
            self._dtypes = [a.dtype for a in arrays]
            for i, a in enumerate(arrays):
                if not np.issubdtype(a.dtype, np.floating):
                    raise AveragingError(f"array {i}{who} has dtype {a.dtype}; only floating weights can be averaged")
            self._sums = [np.zeros(a.shape, np.float64) for a in arrays]
        elif len(arrays) != len(self._sums):
            raise AveragingError(f"weights{who} have {len(arrays)} arrays, the first worker's had {len(self._sums)}")
        for i, (total, a) in enumerate(zip(self._sums, arrays, strict=False)):
            if a.shape != total.shape:
                raise AveragingError(f"array {i}{who} has shape {a.shape}, the first worker's has {total.shape}")
            if not np.all(np.isfinite(a)):
                raise AveragingError(f"array {i}{who} contains NaN or infinity (the worker diverged)")
        for total, a in zip(self._sums, arrays, strict=False):
            total += a.astype(np.float64) * float(num_examples)
        self.total_examples += int(num_examples)
        self.contributions += 1

    def add_partial(self, partial: PartialSum, source: str = "") -> None:
        """Add another accumulator's sums as they are (already weighted): a node of the aggregation tree."""
        who = f" from {source}" if source else ""
        if partial.total_examples <= 0 or not partial.sums:
            raise AveragingError(f"partial sum{who} holds no examples")
        if self._sums is None:
            self._dtypes = list(partial.dtypes)
            self._sums = [np.zeros(s.shape, np.float64) for s in partial.sums]
        shapes = [s.shape for s in self._sums]
        if [s.shape for s in partial.sums] != shapes or list(partial.dtypes) != self._dtypes:
            raise AveragingError(f"partial sum{who} has arrays of other shapes or types than the first one's")
        for total, s in zip(self._sums, partial.sums, strict=True):
            total += s
        self.total_examples += int(partial.total_examples)
        self.contributions += int(partial.contributions)

    def partial(self) -> PartialSum:
        """What was added so far, undivided: to be added into a node above."""
        if self._sums is None:
            raise AveragingError("nothing to sum: no worker's weights were added")
        return PartialSum(self._sums, list(self._dtypes), self.total_examples, self.contributions)

    def result(self) -> list[np.ndarray]:
        """The example-weighted mean of everything added so far."""
        if self._sums is None:
            raise AveragingError("nothing to average: no worker's weights were added")
        return [(total / self.total_examples).astype(dtype)
                for total, dtype in zip(self._sums, self._dtypes, strict=True)]


def weighted_average(pairs: Iterable[tuple[Sequence[np.ndarray], int]],
                     sources: Sequence[str] | None = None) -> list[np.ndarray]:
    """Example-weighted mean of (weights, num_examples) pairs, consumed one at a time, in order.

    `pairs` may be a generator that loads each worker's weights lazily; only one worker's
    arrays and the running sum are in memory at once. `sources` name the pairs in errors.
    """
    average = WeightedAverage()
    for index, (weights, num_examples) in enumerate(pairs):
        average.add(weights, num_examples, source=sources[index] if sources else f"worker #{index}")
    return average.result()


def weighted_mean(pairs: Iterable[tuple[float | None, int]]) -> float | None:
    """Example-weighted mean of (value, num_examples) pairs, skipping missing values; None if none."""
    pairs = [(float(v), int(n)) for v, n in pairs if v is not None and n > 0]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else None


def weighted_metrics(pairs: Iterable[tuple[dict, int]], names: Sequence[str] = ("loss", "accuracy")) -> dict:
    """Per-example means of the metrics `names` over (metrics, num_examples) pairs: a round's train or val score."""
    pairs = list(pairs)
    return {name: weighted_mean((metrics[name], n) for metrics, n in pairs) for name in names}
