"""`orchestrator predictions`: the recorded predictions, newest first."""

from __future__ import annotations

import argparse
import json
import sys

from dlpipe.shared.table import TableError
from orchestrator.commands import add_command
from orchestrator.errors import CommandError
from orchestrator.session import Session

EXAMPLES = """\
examples:
  orchestrator predictions                      # the 20 most recent
  orchestrator predictions --limit 200 --json   # as JSON records
  orchestrator predictions --model fm1          # one model's (on DynamoDB: its index, no scan)
  orchestrator --stack-name dlpipe predictions  # the DynamoDB table of a deployed stack"""


def register(subparsers) -> None:
    p = add_command(
        subparsers, "predictions", help="list recorded predictions, newest first",
        description="List the predictions the predict function recorded in the predictions table "
                    "(SQLite by default, DynamoDB with --stack-name or --table dynamodb://TABLE).",
        examples=EXAMPLES, run=run)
    p.add_argument("--limit", type=int, default=20, metavar="N", help="how many (default: %(default)s; 0 = all)")
    p.add_argument("--model", metavar="NAME", help="only this model's predictions (any version)")
    p.add_argument("--json", action="store_true", help="print the records as JSON")


def _image(record) -> str:
    return record.image_key or record.image_name or f"sha256:{record.image_sha256[:12]}"


def run(args: argparse.Namespace, session: Session) -> int:
    if args.limit < 0:
        raise CommandError(f"--limit {args.limit}: give 0 (all) or a positive number")
    table = session.table()
    try:
        records = table.list(args.limit or None, model=args.model)
    except TableError as err:
        raise CommandError(str(err)) from None
    finally:
        table.close()
    if args.json:
        json.dump([r.to_dict() for r in records], sys.stdout, indent=2)
        print()
        return 0
    if not records:
        which = f"for model {args.model!r} " if args.model else ""
        print(f"no predictions recorded {which}in {table.url} yet: run `orchestrator predict IMAGE`"
              + (" or see `orchestrator models`" if args.model else ""))
        return 0
    rows = [(r.created[:19].replace("T", " "), f"{r.model} {r.version}", _image(r),
             f"{r.top[0]['label']} {r.top[0]['probability']:.3f}" if r.top else "-", f"{r.latency_ms:.1f}",
             r.id[:12]) for r in records]
    header = ("created (UTC)", "model", "image", "top-1", "ms", "id")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    widths[2] = min(widths[2], 48)
    for row in [header] + rows:
        cells = [str(c) if len(str(c)) <= w else "..." + str(c)[-(w - 3):] for c, w in zip(row, widths, strict=True)]
        print("  ".join(f"{c:<{w}}" if i != 4 else f"{c:>{w}}"
                        for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip())
    print(f"\n{len(records)} shown from {table.url}" + (f" (--limit {args.limit})" if args.limit else ""))
    return 0
