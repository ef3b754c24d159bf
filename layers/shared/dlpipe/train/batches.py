"""Which examples a worker trains on in a round, in which order, and its batches as model input.

A round is either whole epochs (`local_epochs`: epoch e of round r visits the shard in
`epoch_order(seed, r, worker, e)`), or a stretch of `local_steps` batches of the worker's
one continuous pass-after-pass stream over its shard (`stream_order`), so that rounds can
be shorter than an epoch: round r takes the stream's batches (r - 1) K to r K - 1 whatever
happened in earlier rounds. Either way a round is a function of (seed, round, worker) alone.

`ShardBatches` normalises one batch at a time, so a worker holds its uint8 shard and a few
float32 batches, never a float32 copy of the shard (which model.fit on arrays made, twice
over with its tensor copy: about 1 GB at 224 px for 650 images). The weights are those of
model.fit on the normalised arrays in the same order: bit for bit when the shard ends with a
partial batch; otherwise Keras gives the arrays a fixed batch dimension and the PyDataset a
free one, the graphs round differently, and they agree to about 1e-7 after a round (which
Adam amplifies over rounds). tests/unit/test_training.py checks both within tolerances.

Imports Keras: the train function imports this module only when it trains or evaluates.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from dlpipe.shared.recipe import Recipe
from dlpipe.wire import Hyper


def epoch_order(seed: int, round: int, worker: int, epoch: int, n: int) -> np.ndarray:
    """The order in which a worker visits its n examples in local epoch `epoch` of a round."""
    return np.random.default_rng([int(seed), int(round), int(worker), int(epoch)]).permutation(n)


def stream_order(seed: int, worker: int, pass_: int, n: int) -> np.ndarray:
    """The order of pass `pass_` of a worker's stream (round 0 never trains: no epoch order is the same)."""
    return epoch_order(seed, 0, worker, pass_, n)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def split(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """An order cut into batches; the last one holds the rest."""
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def stream_batches(seed: int, worker: int, n: int, batch_size: int, first: int, count: int) -> list[np.ndarray]:
    """Batches `first` to `first + count - 1` of the stream: pass after pass, each ending with its rest."""
    per_pass = steps_per_epoch(n, batch_size)
    batches: list[np.ndarray] = []
    step = first
    while len(batches) < count:
        pass_, offset = divmod(step, per_pass)
        take = split(stream_order(seed, worker, pass_, n), batch_size)[offset:offset + count - len(batches)]
        batches += take
        step += len(take)
    return batches


def round_epochs(hyper: Hyper, round: int, worker: int, n: int) -> list[list[np.ndarray]]:
    """The round's batches, as one list per model.fit call: one per local epoch, or the stretch of the stream."""
    if hyper.local_steps is None:
        return [split(epoch_order(hyper.seed, round, worker, e, n), hyper.batch_size)
                for e in range(hyper.local_epochs)]
    return [stream_batches(hyper.seed, worker, n, hyper.batch_size, (round - 1) * hyper.local_steps,
                           hyper.local_steps)]


def pass_ends(hyper: Hyper, round: int, n: int, steps: int) -> int:
    """How many epochs (passes over the shard) a round completed in its first `steps` batches."""
    per_pass = steps_per_epoch(n, hyper.batch_size)
    if hyper.local_steps is None:
        return steps // per_pass
    first = (round - 1) * hyper.local_steps
    return (first + steps) // per_pass - first // per_pass


class ShardBatches(keras.utils.PyDataset):
    """uint8 examples fed batch by batch, each normalised by the recipe when Keras asks for it."""

    def __init__(self, x: np.ndarray, y: np.ndarray, recipe: Recipe, batches: Sequence[np.ndarray]) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.x, self.y, self.recipe, self.batches = x, y, recipe, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = self.batches[index]
        return self.recipe.normalize(self.x[chosen]), self.y[chosen]
