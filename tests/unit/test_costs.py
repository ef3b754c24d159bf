from types import SimpleNamespace

import pytest

from orchestrator.costs import PRICE_PER_GB_SECOND, gb_seconds, summarize


def test_gb_seconds_is_billed_time_times_memory():
    assert gb_seconds(1000, 1024) == 1.0
    assert gb_seconds(250, 4096) == 1.0
    assert gb_seconds(0, 1024) == 0.0


def test_summary_prices_by_architecture():
    records = [SimpleNamespace(billed_ms=2000, memory_mb=2048, ok=True),
               SimpleNamespace(billed_ms=1000, memory_mb=1024, ok=False)]
    x86 = summarize(records)
    arm = summarize(records, "arm64")
    assert x86.gb_seconds == 5.0 and x86.failures == 1 and x86.billed_ms == 3000
    assert x86.dollars == pytest.approx(5 * PRICE_PER_GB_SECOND["x86_64"] + 2 * 0.2e-6)
    assert arm.dollars < x86.dollars
