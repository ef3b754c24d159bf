"""Weighted averaging of worker weights: exact on hand-made weights, streaming == batch."""

from __future__ import annotations

import numpy as np
import pytest

from dlpipe.train.averaging import AveragingError, WeightedAverage, weighted_average


def model(value: float, dtype=np.float32) -> list[np.ndarray]:
    return [np.full((2, 3), value, dtype), np.full((4,), -value, dtype)]


def test_weights_by_example_counts_exactly():
    # (1*100 + 4*300) / 400 = 3.25 and the negated second array: exact in binary.
    result = weighted_average([(model(1.0), 100), (model(4.0), 300)])
    assert [r.dtype for r in result] == [np.float32, np.float32]
    np.testing.assert_array_equal(result[0], np.full((2, 3), 3.25, np.float32))
    np.testing.assert_array_equal(result[1], np.full((4,), -3.25, np.float32))


def test_equal_counts_give_the_plain_mean_and_one_worker_gives_itself():
    rng = np.random.default_rng(0)
    workers = [[rng.normal(size=(3, 3)).astype(np.float32), rng.normal(size=5).astype(np.float32)] for _ in range(3)]
    result = weighted_average((w, 7) for w in workers)
    for i in range(2):
        np.testing.assert_allclose(result[i], np.mean([w[i] for w in workers], axis=0), rtol=1e-6)
    alone = weighted_average([(workers[0], 123)])
    assert all(np.array_equal(a, b) for a, b in zip(alone, workers[0], strict=False))


def test_streaming_equals_batch_formula_whatever_the_order():
    rng = np.random.default_rng(1)
    pairs = [([rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=4).astype(np.float64)],
              int(rng.integers(1, 1000))) for _ in range(6)]
    counts = np.array([n for _, n in pairs], np.float64)
    for i in range(2):
        expected = sum(w[i].astype(np.float64) * n for w, n in pairs) / counts.sum()
        np.testing.assert_allclose(weighted_average(iter(pairs))[i], expected, rtol=1e-6)
    forward = weighted_average(pairs)
    backward = weighted_average(reversed(pairs))
    for a, b in zip(forward, backward, strict=False):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert forward[1].dtype == np.float64


def test_streaming_keeps_one_running_sum_not_every_worker():
    average = WeightedAverage()
    for i in range(50):
        average.add(model(float(i)), 2)
    assert len(average._sums) == 2 and average.contributions == 50 and average.total_examples == 100
    np.testing.assert_allclose(average.result()[0], np.full((2, 3), 24.5))


@pytest.mark.parametrize("count, message", [(0, "trained on 0 examples"), (-5, "trained on -5 examples"),
                                            (2.5, "must be an integer"), (True, "must be an integer")])
def test_bad_example_counts_are_rejected_naming_the_worker(count, message):
    with pytest.raises(AveragingError, match=message) as info:
        weighted_average([(model(1.0), 10), (model(2.0), count)])
    assert "worker #1" in str(info.value)


def test_nothing_to_average_is_an_error():
    with pytest.raises(AveragingError, match="no worker"):
        weighted_average([])


def test_mismatched_shapes_and_array_counts_are_rejected():
    with pytest.raises(AveragingError, match=r"array 1 from worker #1 has shape \(5,\)"):
        weighted_average([(model(1.0), 1), ([np.zeros((2, 3), np.float32), np.zeros(5, np.float32)], 1)])
    with pytest.raises(AveragingError, match="worker #1 have 1 arrays, the first worker's had 2"):
        weighted_average([(model(1.0), 1), ([np.zeros((2, 3), np.float32)], 1)])


def test_diverged_or_non_float_weights_are_rejected():
    bad = model(1.0)
    bad[0][0, 0] = np.nan
    with pytest.raises(AveragingError, match="NaN"):
        weighted_average([(model(1.0), 1), (bad, 1)])
    with pytest.raises(AveragingError, match="only floating"):
        weighted_average([([np.zeros(3, np.int64)], 1)])
