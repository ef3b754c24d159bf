"""What the user sees at the end of a job: a short aligned summary with the bill."""

from __future__ import annotations

import sys
from typing import Iterable, TextIO

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
