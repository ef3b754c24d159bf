from types import SimpleNamespace

import pytest

from orchestrator.costs import PRICE_PER_GB_SECOND, gb_seconds, summarize


def test_gb_seconds_is_billed_time_times_memory():
    assert gb_seconds(1000, 1024) == 1.0
    assert gb_seconds(250, 4096) == 1.0
    assert gb_seconds(0, 1024) == 0.0


def test_summary_prices_by_architecture():
    records = [SimpleNamespace(billed_ms=2000, memory_mb=2048, ok=True, architecture="x86_64"),
               SimpleNamespace(billed_ms=1000, memory_mb=1024, ok=False, architecture="x86_64")]
    x86 = summarize(records)
    arm = summarize([SimpleNamespace(**{**vars(r), "architecture": "arm64"}) for r in records])
    assert x86.gb_seconds == 5.0 and x86.failures == 1 and x86.billed_ms == 3000
    assert x86.dollars == pytest.approx(5 * PRICE_PER_GB_SECOND["x86_64"] + 2 * 0.2e-6)
    assert arm.dollars < x86.dollars


def test_a_mixed_set_prices_each_record_for_its_own_architecture():
    x86 = SimpleNamespace(billed_ms=1000, memory_mb=1024, ok=True, architecture="x86_64")
    arm = SimpleNamespace(billed_ms=1000, memory_mb=1024, ok=True, architecture="arm64")
    assert summarize([x86, arm]).dollars == pytest.approx(
        PRICE_PER_GB_SECOND["x86_64"] + PRICE_PER_GB_SECOND["arm64"] + 2 * 0.2e-6)
