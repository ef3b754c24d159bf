"""The Lambda-time projection (orchestrator.invokers.projection): vCPUs by memory, Amdahl, transfers."""

from __future__ import annotations

import pytest

from orchestrator.invokers.projection import (
    PARALLEL_SHARE,
    projected_ms,
    projected_seconds,
    speedup,
    vcpus,
)


def test_one_vcpu_per_1769_mb_up_to_six():
    assert vcpus(1769) == 1.0
    assert vcpus(4096) == pytest.approx(2.315, abs=1e-3)
    assert vcpus(10240) == pytest.approx(5.79, abs=0.01)
    assert vcpus(20000) == 6.0
    assert vcpus(128) == pytest.approx(128 / 1769)
    with pytest.raises(ValueError, match="memory must be positive"):
        vcpus(0)


def test_amdahl_above_one_vcpu_a_share_below():
    assert speedup(1.0, 0.78) == 1.0
    assert speedup(2.0, 1.0) == 2.0
    assert speedup(2.0, 0.0) == 1.0
    assert speedup(2.0, 0.78) == pytest.approx(1 / (0.22 + 0.39))
    assert speedup(0.5, 0.78) == 0.5               # half a vCPU: twice as long, whatever the code
    with pytest.raises(ValueError, match="parallel share"):
        speedup(2.0, 1.5)


def test_projected_seconds_cpu_over_speedup_plus_bytes_at_70_mb_s():
    assert projected_seconds(10.0, 1769) == 10.0
    assert projected_seconds(10.0, 1769, 70_000_000) == 11.0
    assert projected_seconds(10.0, 3538, 0, 1.0) == pytest.approx(5.0)
    assert projected_seconds(1.0, 884.5) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="cannot be negative"):
        projected_seconds(-1.0, 1769)


def test_the_train_function_is_parallel_the_others_are_not():
    train = projected_ms("train", 10_000, 4096)
    assert train == pytest.approx(10_000 / speedup(vcpus(4096), PARALLEL_SHARE["train"]))
    assert 10_000 / 2.32 < train < 10_000 / 1.5
    assert projected_ms("augment", 10_000, 4096) == pytest.approx(10_000)      # one thread: no faster
