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

from orchestrator.costs import summarize

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


def bill(invocations: Iterable = ()) -> dict:
    """The invocations' cost at Lambda's list price, as numbers: what the summary's last two lines say."""
    cost = summarize(invocations)
    return {"invocations": cost.invocations, "failed_invocations": cost.failures, "billed_ms": cost.billed_ms,
            "gb_seconds": cost.gb_seconds, "dollars": cost.dollars}


def print_json(command: str, figures: Mapping[str, object], failures: Iterable[tuple[str, str]] = (),
               invocations: Iterable = (), out: TextIO | None = None) -> None:
    """The --json contract: {"command", the summary's figures..., "failures": [{"item", "reason"}], "bill"}."""
    out = out or sys.stdout
    document = {"command": command, **figures,
                "failures": [{"item": item, "reason": reason} for item, reason in failures],
                "bill": bill(invocations)}
    json.dump(document, out, indent=2, default=str)
    print(file=out)


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
