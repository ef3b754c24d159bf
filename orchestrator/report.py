"""What the user sees at the end of a job: a short aligned summary with the bill, then what failed."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from typing import TextIO

from orchestrator.costs import summarize


def print_summary(title: str, rows: Iterable[tuple[str, object]], invocations: Iterable = (),
                  out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up per call: sys.stdout may have been replaced since import
    rows = list(rows)
    invocations = list(invocations)
    if invocations:
        cost = summarize(invocations)
        rows += [("invocations", f"{cost.invocations} ({cost.failures} failed)"),
                 ("billed", f"{cost.gb_seconds:,.2f} GB-s  (${cost.dollars:.5f} at Lambda list price)")]
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
