"""The bill at AWS list prices: Lambda compute and requests, S3 requests, and the bytes through the orchestrator.

Prices: us-east-1, on-demand, first tier, as published (see the links). Local runs are
priced as the same work would be on AWS: the local invoker bills each call by the
millisecond at its function's memory, and a directory store's requests as S3's.

What is counted, and where from:
- Lambda: every Invocation record (its billed duration, memory, architecture).
- S3 requests: those of the orchestrator's own process (orchestrator.traffic), plus those every
  function reports in its reply (`requests`, counted by its stores: dlpipe.shared.counted). An
  invocation that fails without a reply reports none.
- Transfer: the bytes between the orchestrator and AWS, store traffic plus invoke payloads
  and log tails. Uploads into AWS are free; downloads are internet egress when the
  orchestrator runs outside AWS (in the same region they would be free).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.traffic import REQUEST_KINDS, Traffic

# https://aws.amazon.com/lambda/pricing/ (us-east-1, first pricing tier)
PRICE_PER_GB_SECOND = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
PRICE_PER_REQUEST = 0.20 / 1_000_000
# https://aws.amazon.com/s3/pricing/ (S3 Standard, us-east-1): per request. HEAD is one of
# "all other requests" (GET's price); DELETE is free.
S3_PRICE_PER_REQUEST = {"put": 0.005 / 1000, "list": 0.005 / 1000, "get": 0.0004 / 1000, "head": 0.0004 / 1000,
                        "delete": 0.0}
# https://aws.amazon.com/ec2/pricing/on-demand/ (Data Transfer OUT to the internet, first 10 TB a month;
# the 100 GB a month that AWS gives free are left out). Transfer IN is free.
EGRESS_PER_GB = 0.09
GB = 1e9  # AWS prices transfer per GB of 10^9 bytes


def gb_seconds(billed_ms: float, memory_mb: int) -> float:
    return billed_ms / 1000.0 * memory_mb / 1024.0


@dataclass(frozen=True)
class CostSummary:
    invocations: int
    failures: int
    billed_ms: int
    gb_seconds: float
    dollars: float            # Lambda: compute and requests


def summarize(records: Iterable) -> CostSummary:
    """Lambda's cost of a set of Invocation records (billed_ms, memory_mb, ok, architecture), each at its own price."""
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


def reported_requests(records: Iterable) -> dict[str, int]:
    """S3 requests that functions made and reported in their replies (`requests`, dlpipe.wire.StoreRequests;
    from a function deployed before replies carried it, only the aggregate action's gets and puts)."""
    counts = dict.fromkeys(REQUEST_KINDS, 0)
    for r in records:
        payload = r.payload if r.ok and isinstance(r.payload, dict) else {}
        made = payload.get("requests")
        if isinstance(made, dict):
            for kind in REQUEST_KINDS:
                counts[kind] += int(made.get(kind, 0))
        elif payload.get("action") == "aggregate":
            counts["get"] += int(payload.get("gets", 0))
            counts["put"] += int(payload.get("puts", 0))
    return counts


def s3_request_dollars(requests: dict[str, int]) -> float:
    return sum(count * S3_PRICE_PER_REQUEST[kind] for kind, count in requests.items())


@dataclass(frozen=True)
class Bill:
    """A job's whole bill, line by line; `total` is their sum."""

    lambda_: CostSummary
    orchestrator_requests: dict[str, int]
    function_requests: dict[str, int]
    s3_dollars: float
    bytes_down: int           # AWS -> the orchestrator: store reads, invoke replies and log tails
    bytes_up: int             # the orchestrator -> AWS: store writes, invoke events
    transfer_dollars: float
    outside_aws: bool

    @property
    def requests(self) -> dict[str, int]:
        return {k: self.orchestrator_requests[k] + self.function_requests[k] for k in REQUEST_KINDS}

    @property
    def total(self) -> float:
        return self.lambda_.dollars + self.s3_dollars + self.transfer_dollars


def transfer_bytes(records: Iterable, traffic: Traffic | None) -> tuple[int, int]:
    """(down, up) bytes between the orchestrator and AWS: the store traffic and the invocations' payloads."""
    records = list(records)
    down = sum(r.response_bytes for r in records) + (traffic.bytes_down if traffic else 0)
    up = sum(r.request_bytes for r in records) + (traffic.bytes_up if traffic else 0)
    return down, up


def bill(records: Iterable, traffic: Traffic | None = None, outside_aws: bool = True) -> Bill:
    """The bill of `records` (Invocations) and of the orchestrator's `traffic` with the stores."""
    records = list(records)
    ours = dict(traffic.requests) if traffic else dict.fromkeys(REQUEST_KINDS, 0)
    theirs = reported_requests(records)
    down, up = transfer_bytes(records, traffic)
    return Bill(lambda_=summarize(records), orchestrator_requests=ours, function_requests=theirs,
                s3_dollars=s3_request_dollars(ours) + s3_request_dollars(theirs), bytes_down=down, bytes_up=up,
                transfer_dollars=down / GB * EGRESS_PER_GB if outside_aws else 0.0, outside_aws=outside_aws)
