"""Sub-commands run one after another, as a user would type them: the demos' steps.

Each step is the real sub-command, parsed from the same arguments a user would type and run
on the same session (so the worker pools stay warm from one step to the next). The chained
commands are registered on a parser of their own rather than through orchestrator.cli,
which imports the demo.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import TextIO

from orchestrator.errors import CommandError
from orchestrator.report import print_json, print_summary
from orchestrator.session import Session
from orchestrator.traffic import Traffic


def step_parser(commands) -> argparse.ArgumentParser:
    """The chained commands' own parsers, as `orchestrator COMMAND` has them."""
    parser = argparse.ArgumentParser(prog="orchestrator")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        command.register(sub)
    return parser


def run_step(parser: argparse.ArgumentParser, session: Session, title: str, argv: list[str]) -> None:
    print(f"\n=== {title}: orchestrator {shlex.join(argv)}", flush=True)
    args = parser.parse_args(argv)
    status = args.run(args, session)
    if status:
        raise CommandError(f"demo stopped: `orchestrator {shlex.join(argv)}` exited with status {status}")


def held_out_sample(data_store, prefix: str) -> list[str]:
    """One image per class under `prefix`: for images no training worker has seen."""
    first: dict[str, str] = {}
    for key in data_store.list(prefix + "/"):
        first.setdefault(key.split("/")[-2], key)
    return [first[c] for c in sorted(first)]


def output_dir(session: Session) -> Path:
    """Where a demo leaves its plots: beside a local data store, else ./demo-output."""
    url = session.settings.data_url
    return Path(url).parent / "demo" if "://" not in url else Path("demo-output")


def print_demo_summary(session: Session, title: str, name: str, out_dir: Path, figure: Path, workers: int,
                       start: float, json_out: TextIO | None = None, traffic_at_start: Traffic | None = None) -> None:
    """Rounds, the last validation accuracy, where the plots are, and the bill (also as one JSON document)."""
    metrics = json.loads((out_dir / f"{name}-metrics.json").read_text())
    traffic = session.meter.snapshot() - (traffic_at_start or Traffic())
    last = metrics["rounds"][-1] if metrics["rounds"] else {}
    val = (last.get("val") or {}).get("accuracy")
    print_summary(title, [
        ("rounds", f"{len(metrics['rounds'])} x {workers} workers"),
        ("validation accuracy", f"{val:.1%}" if val is not None else "n/a"),
        ("training plot", str(out_dir / f"{name}-metrics.png")),
        ("predictions figure", str(figure)),
        ("stores", f"{session.settings.data_url} | {session.settings.model_url}"),
        ("wall time", f"{time.perf_counter() - start:.0f} s"),
    ], session.invoker.records, traffic=traffic)
    if json_out is not None:   # --json: the one document, on the stdout the demo's steps were kept off
        print_json(title, {
            "rounds": len(metrics["rounds"]), "workers": workers, "validation_accuracy": val,
            "training_plot": str(out_dir / f"{name}-metrics.png"), "predictions_figure": str(figure),
            "data_store": session.settings.data_url, "model_store": session.settings.model_url,
            "wall_seconds": time.perf_counter() - start}, invocations=session.invoker.records, out=json_out,
            traffic=traffic)
