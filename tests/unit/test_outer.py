"""The outer optimizer (dlpipe.train.outer): FedAvg exactly, SlowMo/DiLoCo's Nesterov step by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dlpipe.train.outer import OuterOptimizer, OuterStepError, outer_step


def _weights(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]


def test_fedavg_returns_the_average_bit_for_bit_and_keeps_no_state():
    previous, average = _weights(0), _weights(1)
    new, buffer = outer_step(OuterOptimizer(1.0, 0.0), previous, average, None)
    assert buffer is None
    assert all(n is a for n, a in zip(new, average, strict=True))


def test_no_momentum_moves_a_share_of_the_way_to_the_average():
    previous, average = _weights(0), _weights(1)
    new, buffer = outer_step(OuterOptimizer(0.5, 0.0), previous, average, None)
    for n, p, a in zip(new, previous, average, strict=True):
        np.testing.assert_allclose(n, (p.astype(np.float64) + a) / 2, rtol=1e-6)
        assert n.dtype == np.float32
    assert buffer is not None and all(b.dtype == np.float32 for b in buffer)


def test_nesterov_momentum_over_two_rounds_by_hand():
    lr, mu = 0.7, 0.9
    optimizer = OuterOptimizer(lr, mu)
    p0, a1, a2 = np.array([1.0]), np.array([0.5]), np.array([0.2])
    g1, b1 = outer_step(optimizer, [p0], [a1], None)
    delta1 = 0.5
    assert b1 is not None
    np.testing.assert_allclose(b1[0], [delta1])
    np.testing.assert_allclose(g1[0], [1.0 - lr * (delta1 + mu * delta1)])
    g2, b2 = outer_step(optimizer, g1, [a2], b1)
    delta2 = g1[0][0] - 0.2
    buf2 = mu * delta1 + delta2
    assert b2 is not None
    np.testing.assert_allclose(b2[0], [buf2])
    np.testing.assert_allclose(g2[0], [g1[0][0] - lr * (delta2 + mu * buf2)])


def test_plain_momentum_applies_the_buffer():
    new, buffer = outer_step(OuterOptimizer(1.0, 0.5, nesterov=False), [np.array([2.0])], [np.array([1.0])],
                             [np.array([4.0])])
    assert buffer is not None
    np.testing.assert_allclose(buffer[0], [3.0])          # 0.5 * 4 + 1
    np.testing.assert_allclose(new[0], [2.0 - 3.0])


def test_the_same_inputs_give_the_same_bytes():
    previous, average, buffer = _weights(0), _weights(1), _weights(2)
    one = outer_step(OuterOptimizer(0.8, 0.6), previous, average, buffer)
    two = outer_step(OuterOptimizer(0.8, 0.6), previous, average, buffer)
    for x, y in zip(one[0] + (one[1] or []), two[0] + (two[1] or []), strict=True):
        assert x.tobytes() == y.tobytes()


def test_mismatched_arrays_are_named():
    with pytest.raises(OuterStepError, match="array 1 of the average"):
        outer_step(OuterOptimizer(0.7, 0.9), _weights(0), [_weights(1)[0], np.zeros(6, np.float32)], None)
    with pytest.raises(OuterStepError, match="outer momentum has 1 arrays"):
        outer_step(OuterOptimizer(0.7, 0.9), _weights(0), _weights(1), [np.zeros((3, 4))])


def test_a_step_that_overflows_is_refused():
    with pytest.raises(OuterStepError, match="NaN or infinite"):
        outer_step(OuterOptimizer(0.7, 0.9), [np.array([3e38], np.float32)], [np.array([-3e38], np.float32)], None)


@pytest.mark.parametrize("lr, mu", [(0.0, 0.0), (-1.0, 0.5), (1.0, 1.0), (1.0, -0.1)])
def test_invalid_settings_are_refused(lr, mu):
    with pytest.raises(ValueError, match="outer learning rate"):
        OuterOptimizer(lr, mu)
