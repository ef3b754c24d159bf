"""Lambda's published on-demand price, applied to recorded invocations."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# https://aws.amazon.com/lambda/pricing/ (us-east-1, first pricing tier)
PRICE_PER_GB_SECOND = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
PRICE_PER_REQUEST = 0.20 / 1_000_000


def gb_seconds(billed_ms: float, memory_mb: int) -> float:
    return billed_ms / 1000.0 * memory_mb / 1024.0


@dataclass(frozen=True)
class CostSummary:
    invocations: int
    failures: int
    billed_ms: int
    gb_seconds: float
    dollars: float


def summarize(records: Iterable) -> CostSummary:
    """Cost of a set of Invocation records (billed_ms, memory_mb, ok, architecture), each at its own price."""
    records = list(records)
    each = [(gb_seconds(r.billed_ms, r.memory_mb), r.architecture) for r in records]
    gbs = sum(g for g, _ in each)
    compute = sum(g * PRICE_PER_GB_SECOND[arch] for g, arch in each)
    return CostSummary(
        invocations=len(records),
        failures=sum(1 for r in records if not r.ok),
        billed_ms=int(sum(r.billed_ms for r in records)),
        gb_seconds=gbs,
        dollars=compute + len(records) * PRICE_PER_REQUEST,
    )
