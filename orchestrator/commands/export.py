"""`orchestrator export`: a training run's global weights as a servable model version."""

from __future__ import annotations

import argparse
import time

from orchestrator.commands import add_command, require_train_extra
from orchestrator.errors import CommandError
from orchestrator.quiet import native_output_captured
from orchestrator.report import add_json_argument, human_out, print_json, print_summary
from orchestrator.session import Session

EXAMPLES = """\
examples:
  orchestrator export --run fmnist                  # the run's latest round, as model "fmnist"
  orchestrator export --run fmnist --round 3 --name fmnist-r3
  orchestrator predict shirt.png --model fmnist"""


def register(subparsers) -> None:
    p = add_command(
        subparsers, "export", help="turn a training run's weights into a servable model version",
        description="Rebuild the run's SqueezeNet with the global weights of a completed round, convert it to "
                    "LiteRT (float32) and write model.tflite, labels, preprocessing recipe and meta.json as the "
                    "next version of a model in the model store, then point the model's `latest` at it.",
        examples=EXAMPLES, run=run)
    p.add_argument("--run", dest="run_name", required=True, metavar="RUN",
                   help="the training run (as given to `orchestrator train`)")
    p.add_argument("--round", type=int, metavar="N", help="a completed round (default: the run's latest)")
    p.add_argument("--name", metavar="NAME", help="model name (default: the run name)")
    p.add_argument("--version", metavar="V", help="version label (default: the next vN)")
    add_json_argument(p)


def run(args: argparse.Namespace, session: Session) -> int:
    require_train_extra("export", ("tensorflow", "keras"))
    from dlpipe.publish.export import ExportError, export_model
    from dlpipe.runs.run import TrainingRun, lineage_of
    from dlpipe.train.model import build_model
    from dlpipe.train.weights import CheckpointError

    store, out = session.model_store(), human_out(args)
    name = args.name or args.run_name
    start = time.perf_counter()
    try:
        run_ = TrainingRun(store, args.run_name)
        weights, config = run_.load_global(args.round)
        round_ = args.round if args.round is not None else run_.latest_round()
        print(f"exporting run {args.run_name!r} round {round_} (loads TensorFlow; takes a few seconds)...", file=out)
        with native_output_captured(session.verbose):   # TensorFlow's C++ logging and the converter's
            model = build_model(config, weights)
            exported = export_model(model, store, name, list(config.labels), config.recipe,
                                    source={"kind": "run", "run": args.run_name, "round": round_,
                                            **lineage_of(run_.config())},
                                    version=args.version, config=config)
    except (CheckpointError, ExportError, ValueError) as err:
        raise CommandError(str(err)) from None
    traffic = session.meter.take()
    print_summary("export", [
        ("model", f"{exported.name} {exported.version} (now latest)"),
        ("from", f"run {args.run_name} round {round_}"),
        ("written to", f"{store.url}/{exported.prefix}"),
        ("architecture", f"SqueezeNet {config.version}, input {'x'.join(map(str, config.input_shape))}, "
                         f"{config.classes} classes"),
        ("model.tflite", f"{exported.tflite_bytes / 1e6:.1f} MB"),
        ("LiteRT vs Keras", f"max |diff| {exported.max_abs_diff:.2g} on a random input"),
        ("wall time", f"{time.perf_counter() - start:.1f} s"),
    ], out=out, traffic=traffic)
    if args.json:
        print_json("export", {
            "model": exported.name, "version": exported.version, "run": args.run_name, "round": round_,
            "written_to": f"{store.url}/{exported.prefix}", "squeezenet": config.version,
            "input_shape": list(config.input_shape), "classes": config.classes, "tflite_bytes": exported.tflite_bytes,
            "max_abs_diff": exported.max_abs_diff, "wall_seconds": time.perf_counter() - start}, traffic=traffic)
    print(f"\ntry it: orchestrator predict IMAGE --model {exported.name}", file=out)
    return 0
