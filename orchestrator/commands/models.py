"""`orchestrator models`: the servable model versions in the model store, with their lineage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from dlpipe.predict.versions import latest_version, list_models, read_meta, version_key
from dlpipe.wire import NotFound
from orchestrator.commands import add_command
from orchestrator.session import Session

EXAMPLES = """\
examples:
  orchestrator models          # one line a version: what it is, where it came from, what was trained
  orchestrator models --json   # each version's meta.json, with "latest" and "can_seed"

columns: "from" is the ONNX file a version was imported from, or the training run and round it
was exported from; "init from" is the version a fine-tuned run started from (`train --init-from`;
"scratch" for random weights); "trained" is what that run trained (classifier or all layers);
"seeds a run" says whether `train --init-from MODEL:VERSION` can start from it (it needs the
version's Keras weights, weights.npz and model.json, which versions written before these were
kept lack). "?" marks what a version written before lineage was recorded does not say."""

NOT_RECORDED = "?"


def register(subparsers) -> None:
    p = add_command(
        subparsers, "models", help="list servable model versions and where they came from",
        description="List the model versions in the model store that the predict function can serve "
                    "(written by `orchestrator export`, `import-onnx` and `fetch-model`), with their lineage.",
        examples=EXAMPLES, run=run)
    p.add_argument("--json", action="store_true", help="print the versions' meta.json as JSON")


def origin(meta: dict) -> str:
    """Where the version's weights came from: an ONNX file, or a run's round."""
    source = meta.get("source") or {}
    if source.get("kind") == "onnx":
        return f"ONNX {source.get('file', '?')} ({source.get('architecture', 'SqueezeNet')})"
    if source.get("kind") == "run":
        return f"run {source.get('run')} round {source.get('round')}"
    return ", ".join(f"{k}={v}" for k, v in source.items()) or "-"


def lineage(meta: dict) -> tuple[str, str]:
    """(init from, trained) of a version exported from a run; "-" for imported ones."""
    source = meta.get("source") or {}
    if source.get("kind") != "run":
        return "-", "-"
    if "init_from" not in source:            # exported before runs recorded their starting point
        return NOT_RECORDED, NOT_RECORDED
    start = source["init_from"]
    started = f"{start['model']} {start['version']}" if start else "scratch"
    trained = {"classifier": "classifier only", "all": "all layers"}.get(str(source.get("trainable")), NOT_RECORDED)
    return started, trained


def can_seed(store, name: str, version: str) -> bool:
    """Whether `train --init-from NAME:VERSION` can start from it: its Keras weights and config are kept."""
    return all(store.exists(version_key(name, version, f)) for f in ("model.json", "weights.npz"))


def entries(store) -> list[dict]:
    found: list[dict] = []
    for name, versions in list_models(store).items():
        try:
            latest = latest_version(store, name)
        except NotFound:
            latest = None
        found.extend({**read_meta(store, name, version), "name": name, "version": version,
                      "latest": version == latest, "can_seed": can_seed(store, name, version)} for version in versions)
    return found


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]


def run(args: argparse.Namespace, session: Session) -> int:
    store = session.model_store()
    found = entries(store)
    if args.json:
        json.dump(found, sys.stdout, indent=2)
        print()
        return 0
    if not found:
        print(f"no models in {store.url} yet: run `orchestrator fetch-model`, `orchestrator import-onnx` "
              "or `orchestrator export`")
        return 0
    rows = [(e["name"], e["version"] + (" *" if e["latest"] else ""), str(e.get("classes", "?")),
             "x".join(str(d) for d in e.get("input_shape", [])), e.get("created", "")[:16].replace("T", " "),
             origin(e), *lineage(e), "yes" if e["can_seed"] else "no")
            for e in found]
    header = ("model", "version", "classes", "input", "created (UTC)", "from", "init from", "trained",
              "seeds a run")
    for line in table(rows, header):
        print(line)
    print(f"\n* = latest (served when no --version is given); store: {store.url}")
    if not all(e["can_seed"] for e in found):
        print("a version that cannot seed a run serves as before; to fine-tune from it, make a new version "
              "(`orchestrator export --run RUN` or `import-onnx FILE`)")
    return 0
