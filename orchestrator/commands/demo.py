"""`orchestrator demo`: the whole pipeline on Fashion-MNIST, as a user would run it.

Each step is the real sub-command, parsed from the same arguments a user would type and
run on the same session (so the worker pools stay warm from one step to the next). The
demo adds no logic of its own: if it works, the commands it chains work. It registers the
commands it chains on a parser of its own rather than importing orchestrator.cli, which
imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import time
from pathlib import Path

from orchestrator.commands import add_command, augment, export, fashion_mnist, predict, prepare, train
from orchestrator.errors import CommandError
from orchestrator.report import add_json_argument, human_out, print_json, print_summary

STEP_COMMANDS = (fashion_mnist, augment, prepare, train, export, predict)

EXAMPLES = """\
examples:
  orchestrator demo                          # 3-4 minutes on 2 cores, ~83% validation accuracy
  orchestrator demo --images 12000 --rounds 5 --workers 4
  orchestrator --stack-name dlpipe demo      # the same on AWS Lambda"""


def register(subparsers) -> None:
    p = add_command(
        subparsers, "demo",
        help="run the whole pipeline on Fashion-MNIST (load, augment, prepare, train, export, predict)",
        description="Write Fashion-MNIST into the data store as images in class folders, augment the training "
                    "images (original + mirror image), pack them into shards, train SqueezeNet 1.1 data-parallel "
                    "for a few rounds, export the result for LiteRT serving and predict on held-out test images.",
        examples=EXAMPLES, run=run)
    p.add_argument("--images", type=int, default=6000, metavar="N",
                   help="training images to use (and as many held-out test images; default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="training workers (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, metavar="R", help="training rounds (default: %(default)s)")
    p.add_argument("--local-epochs", type=int, default=2, metavar="E",
                   help="epochs each worker trains per round (default: %(default)s)")
    p.add_argument("--run-name", default="demo", metavar="RUN",
                   help="training run and model name (default: %(default)s); an existing run is resumed")
    add_json_argument(p)


def step_parser() -> argparse.ArgumentParser:
    """The chained commands' own parsers, as `orchestrator COMMAND` has them."""
    parser = argparse.ArgumentParser(prog="orchestrator")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in STEP_COMMANDS:
        command.register(sub)
    return parser


def _step(parser: argparse.ArgumentParser, session, title: str, argv: list[str]) -> None:
    print(f"\n=== {title}: orchestrator {shlex.join(argv)}", flush=True)
    args = parser.parse_args(argv)
    status = args.run(args, session)
    if status:
        raise CommandError(f"demo stopped: `orchestrator {shlex.join(argv)}` exited with status {status}")


def held_out_sample(data_store, prefix: str) -> list[str]:
    """One test image per class: images no training worker has seen."""
    first: dict[str, str] = {}
    for key in data_store.list(prefix + "/"):
        first.setdefault(key.split("/")[-2], key)
    return [first[c] for c in sorted(first)]


def run(args: argparse.Namespace, session) -> int:
    start = time.perf_counter()
    # Under --json the steps' own reports go to stderr with the rest of the human report.
    with contextlib.redirect_stdout(human_out(args)):
        out_dir, figure = _run_steps(args, session)
    _report(args, session, out_dir, figure, time.perf_counter() - start)
    return 0


def _run_steps(args: argparse.Namespace, session) -> tuple[Path, Path]:
    parser = step_parser()
    name = args.run_name
    out_dir = Path(session.settings.data_url).parent / "demo" if "://" not in session.settings.data_url \
        else Path("demo-output")
    figure = out_dir / "predictions.png"
    _step(parser, session, "1/6 load Fashion-MNIST as images in class folders",
          ["fashion-mnist", "--prefix", "fashion-mnist", "--limit", str(args.images)])
    _step(parser, session, "2/6 augment the training images",
          ["augment", "--source", "fashion-mnist/train", "--output", "fashion-mnist/train-augmented",
           "--variants", "original", "flip", "--format", "png", "--batch-size", "250"])
    _step(parser, session, "3/6 pack shards for the training workers",
          ["prepare", "--source", "fashion-mnist/train-augmented", "--val-source", "fashion-mnist/test",
           "--dataset", name, "--workers", str(args.workers), "--recipe", "fashion-mnist"])
    _step(parser, session, "4/6 train data-parallel",
          ["train", "--dataset", name, "--run", name, "--workers", str(args.workers), "--rounds", str(args.rounds),
           "--local-epochs", str(args.local_epochs), "--resume", "--output", str(out_dir)])
    _step(parser, session, "5/6 export for LiteRT serving", ["export", "--run", name, "--name", name])
    sample = held_out_sample(session.data_store(), "fashion-mnist/test")
    _step(parser, session, "6/6 predict on held-out test images",
          ["predict", *[f"store:{key}" for key in sample], "--model", name, "--top-k", "3", "--show", str(figure)])
    return out_dir, figure


def _report(args: argparse.Namespace, session, out_dir: Path, figure: Path, wall: float) -> None:
    name, out = args.run_name, human_out(args)
    metrics = json.loads((out_dir / f"{name}-metrics.json").read_text())
    last = metrics["rounds"][-1] if metrics["rounds"] else {}
    val = (last.get("val") or {}).get("accuracy")
    print_summary("demo", [
        ("rounds", f"{len(metrics['rounds'])} x {args.workers} workers"),
        ("validation accuracy", f"{val:.1%}" if val is not None else "n/a"),
        ("training plot", str(out_dir / f"{name}-metrics.png")),
        ("predictions figure", str(figure)),
        ("stores", f"{session.settings.data_url} | {session.settings.model_url}"),
        ("wall time", f"{wall:.0f} s"),
    ], session.invoker.records, out=out)
    if args.json:
        print_json("demo", {
            "rounds": len(metrics["rounds"]), "workers": args.workers, "validation_accuracy": val,
            "training_plot": str(out_dir / f"{name}-metrics.png"), "predictions_figure": str(figure),
            "data_store": session.settings.data_url, "model_store": session.settings.model_url,
            "wall_seconds": wall}, invocations=session.invoker.records)
    print("\nnext: orchestrator predict YOUR_IMAGE.png --model " + name, file=out)
