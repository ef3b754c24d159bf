"""What the user sees at the end of a job: a short aligned summary with the bill, then what failed.

With `--json`, a script sees instead one JSON document on stdout (`print_json`): the summary's
figures, every failure with its reason, and the bill; the human report, progress and hints go to
stderr (`human_out`), and progress bars are drawn only on a terminal (`progress_bar`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TextIO

from tqdm import tqdm

from orchestrator.costs import Bill, bill
from orchestrator.traffic import Traffic


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


JSON_HELP = ("print one JSON document on stdout (the summary's figures, failures with reasons, the bill) and "
             "nothing else; the report goes to stderr")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def human_out(args: argparse.Namespace, out: TextIO | None = None) -> TextIO:
    """Where the report for a person goes: stderr under --json (stdout carries the document), else `out` or stdout."""
    if getattr(args, "json", False):
        return sys.stderr
    return out or sys.stdout  # looked up per call: sys.stdout may have been replaced since import


def progress_bar(*, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar on stderr, drawn only when stderr is a terminal: never into a log file, a pipe or a capture."""
    return tqdm(file=sys.stderr, disable=None if enabled else True, **kwargs)


def bill_document(invocations: Iterable = (), traffic: Traffic | None = None) -> dict:
    """The bill as numbers: what the summary's bill lines say."""
    cost = bill(invocations, traffic)
    return {"invocations": cost.lambda_.invocations, "failed_invocations": cost.lambda_.failures,
            "billed_ms": cost.lambda_.billed_ms, "gb_seconds": cost.lambda_.gb_seconds,
            "dollars": cost.lambda_.dollars, "s3_requests": cost.requests, "s3_dollars": cost.s3_dollars,
            "bytes_down": cost.bytes_down, "bytes_up": cost.bytes_up, "transfer_dollars": cost.transfer_dollars,
            "total_dollars": cost.total}


def print_json(command: str, figures: Mapping[str, object], failures: Iterable[tuple[str, str]] = (),
               invocations: Iterable = (), out: TextIO | None = None, *, traffic: Traffic) -> None:
    """The --json contract: {"command", the summary's figures..., "failures": [{"item", "reason"}], "bill"}.

    `traffic`: the job's with the stores (`session.meter.take()`), the same the summary billed.
    """
    out = out or sys.stdout
    document = {"command": command, **figures,
                "failures": [{"item": item, "reason": reason} for item, reason in failures],
                "bill": bill_document(invocations, traffic)}
    json.dump(document, out, indent=2, default=str)
    print(file=out)


def print_summary(title: str, rows: Iterable[tuple[str, object]], invocations: Iterable = (),
                  out: TextIO | None = None, *, traffic: Traffic) -> None:
    """`traffic`: the orchestrator's with the stores during the job (`session.meter.take()`)."""
    out = out or sys.stdout  # looked up per call: sys.stdout may have been replaced since import
    rows = list(rows)
    invocations = list(invocations)
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
