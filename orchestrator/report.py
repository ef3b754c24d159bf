"""What the user sees at the end of a job: a short aligned summary with the bill, then what failed."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from typing import TextIO

from orchestrator.costs import Bill, bill
from orchestrator.traffic import METER, Traffic


def megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB" if count >= 100_000 else f"{count / 1e3:,.1f} kB"


def bill_rows(cost: Bill) -> list[tuple[str, str]]:
    """The bill, a line per kind of charge; the lines add up to the total."""
    rows = []
    if cost.lambda_.invocations:
        billed = (f"{cost.lambda_.gb_seconds:,.2f} GB-s  (${cost.lambda_.dollars:.5f} at Lambda list price, "
                  "requests included)")
        rows += [("invocations", f"{cost.lambda_.invocations} ({cost.lambda_.failures} failed)"), ("billed", billed)]
    kinds = ", ".join(f"{count:,} {kind.upper()}" for kind, count in cost.requests.items() if count) or "none"
    theirs = sum(cost.function_requests.values())
    by_functions = f" ({theirs:,} by functions)" if theirs else ""
    rows.append(("S3 requests", f"{kinds}{by_functions}  (${cost.s3_dollars:.5f})"))
    priced = "as internet egress" if cost.outside_aws else "inside AWS: free"
    through = (f"{megabytes(cost.bytes_down)} down, {megabytes(cost.bytes_up)} up through the orchestrator  "
               f"(${cost.transfer_dollars:.5f} {priced})")
    rows += [("transfer", through), ("total", f"${cost.total:.5f} at list price")]
    return rows


def print_summary(title: str, rows: Iterable[tuple[str, object]], invocations: Iterable = (),
                  out: TextIO | None = None, traffic: Traffic | None = None) -> None:
    """`traffic`: the orchestrator's with the stores; by default all of it since the previous summary."""
    out = out or sys.stdout  # looked up per call: sys.stdout may have been replaced since import
    rows = list(rows)
    invocations = list(invocations)
    traffic = METER.take() if traffic is None else traffic
    if invocations or traffic.request_count:
        rows += bill_rows(bill(invocations, traffic))
    width = max((len(label) for label, _ in rows), default=0)
    print(f"\n{title}", file=out)
    print("-" * max(len(title), 20), file=out)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}", file=out)


def print_failures(failures: list[tuple[str, str]], out: TextIO | None = None, limit: int = 50,
                   title: str = "failed") -> None:
    """Each failure by name with its reason; past `limit`, a count by reason instead."""
    out = out or sys.stdout
    if not failures:
        return
    print(f"\n{title} ({len(failures)}):", file=out)
    for name, reason in failures[:limit]:
        print(f"  {name}: {reason}", file=out)
    if len(failures) > limit:
        print(f"  ... and {len(failures) - limit} more; all failures by reason:", file=out)
        for reason, count in Counter(r for _, r in failures).most_common(10):
            print(f"  {count:>6} x {reason}", file=out)
