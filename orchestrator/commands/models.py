"""`orchestrator models`: the servable model versions in the model store."""

from __future__ import annotations

import argparse
import json
import sys

from dlpipe.predict.versions import latest_version, list_models, read_meta
from dlpipe.wire import NotFound
from orchestrator.commands import add_command

EXAMPLES = """\
examples:
  orchestrator models          # name, version, latest marker, classes, input size, source
  orchestrator models --json"""


def register(subparsers) -> None:
    p = add_command(
        subparsers, "models", help="list servable model versions",
        description="List the model versions in the model store that the predict function can serve "
                    "(written by `orchestrator export` and `orchestrator import-onnx`).",
        examples=EXAMPLES, run=run)
    p.add_argument("--json", action="store_true", help="print the versions' meta.json as JSON")


def _source(meta: dict) -> str:
    source = meta.get("source") or {}
    if source.get("kind") == "onnx":
        return f"{source.get('architecture', 'ONNX')} from {source.get('file', '?')}"
    if source.get("kind") == "run":
        return f"run {source.get('run')} round {source.get('round')}"
    return ", ".join(f"{k}={v}" for k, v in source.items()) or "-"


def run(args: argparse.Namespace, session) -> int:
    store = session.model_store()
    entries = []
    for name, versions in list_models(store).items():
        try:
            latest = latest_version(store, name)
        except NotFound:
            latest = None
        for version in versions:
            entries.append({**read_meta(store, name, version), "name": name, "version": version,
                            "latest": version == latest})
    if args.json:
        json.dump(entries, sys.stdout, indent=2)
        print()
        return 0
    if not entries:
        print(f"no models in {store.url} yet: run `orchestrator export` or `orchestrator import-onnx`")
        return 0
    rows = [(e["name"], e["version"] + (" *" if e["latest"] else ""), str(e.get("classes", "?")),
             "x".join(str(d) for d in e.get("input_shape", [])), e.get("created", "")[:19].replace("T", " "),
             _source(e)) for e in entries]
    header = ("model", "version", "classes", "input", "created (UTC)", "source")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"\n* = latest (served when no --version is given); store: {store.url}")
    return 0
