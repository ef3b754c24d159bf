"""The outer optimizer: how a round's averaged weights become the new global weights. numpy only.

Plain FedAvg takes the workers' example-weighted average as the new global weights. SlowMo
(Wang et al. 2020), FedAvgM (Hsu et al. 2019) and DiLoCo (Douillard et al. 2023) treat the
step the workers took together, previous global - average, as a pseudo-gradient and apply
it with an outer learning rate and Nesterov momentum:

    delta    = previous - average
    buffer   = momentum * buffer + delta
    update   = delta + momentum * buffer      (Nesterov; plain momentum: update = buffer)
    global   = previous - learning_rate * update

Momentum carries the direction the workers agree on from round to round, which averaging
alone loses when workers drift apart over long rounds. Learning rate 1 with momentum 0 is
FedAvg; it is short-circuited so that the result is the average itself, bit for bit.

The buffer is the run's outer state (runs/<run>/rounds/<r>/outer.npz), applied once per
round at the root of the aggregation tree by whichever engine aggregates. It is returned in
the weights' own dtypes, exactly what is stored, so the next round reads back the very
values this one used: a resumed run stays bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class OuterStepError(ValueError):
    """Arrays that cannot take an outer step together; the message names the array."""


@dataclass(frozen=True)
class OuterOptimizer:
    learning_rate: float = 1.0
    momentum: float = 0.0
    nesterov: bool = True

    def __post_init__(self) -> None:
        if not self.learning_rate > 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"outer learning rate must be > 0 and momentum in [0, 1), not {self.learning_rate} "
                             f"and {self.momentum}")

    @property
    def is_plain_average(self) -> bool:
        """FedAvg: the new global weights are the average, and there is no state to keep."""
        return self.learning_rate == 1.0 and self.momentum == 0.0


def _check(previous: Sequence[np.ndarray], other: Sequence[np.ndarray], what: str) -> None:
    if len(other) != len(previous):
        raise OuterStepError(f"{what} has {len(other)} arrays, the previous global weights {len(previous)}")
    for i, (p, o) in enumerate(zip(previous, other, strict=True)):
        if np.shape(p) != np.shape(o):
            raise OuterStepError(f"array {i} of {what} is {np.shape(o)}, of the previous global weights "
                                 f"{np.shape(p)}")


def outer_step(optimizer: OuterOptimizer, previous: Sequence[np.ndarray], average: Sequence[np.ndarray],
               buffer: Sequence[np.ndarray] | None) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """(new global weights, new momentum buffer) from the previous global weights and the workers' average.

    `buffer` None: no momentum yet (the first round, or FedAvg). With FedAvg the average is
    returned as it is and the buffer stays None. Arithmetic in float64, results in the
    weights' dtypes.
    """
    if optimizer.is_plain_average:
        return list(average), None
    _check(previous, average, "the average")
    if buffer is not None:
        _check(previous, buffer, "the outer momentum")
    new_global, new_buffer = [], []
    for i, (p, a) in enumerate(zip(previous, average, strict=True)):
        p64 = np.asarray(p, np.float64)
        delta = p64 - np.asarray(a, np.float64)
        momentum = delta if buffer is None else optimizer.momentum * np.asarray(buffer[i], np.float64) + delta
        update = delta + optimizer.momentum * momentum if optimizer.nesterov else momentum
        dtype = np.asarray(p).dtype
        with np.errstate(over="ignore", invalid="ignore"):
            stepped = (p64 - optimizer.learning_rate * update).astype(dtype)
        if not np.all(np.isfinite(stepped)):
            raise OuterStepError(f"the outer step made array {i} NaN or infinite (lower --outer-lr)")
        new_global.append(stepped)
        new_buffer.append(momentum.astype(dtype))
    return new_global, new_buffer
