"""`orchestrator`: drive the pipeline's functions from one machine.

Each sub-command lives in orchestrator/commands/<name>.py and exposes
`register(subparsers)`, which adds its parser and sets `run(args, session) -> int`.
Nothing imports this module back (the demo builds its own parser), so there is no cycle.
`python -m orchestrator` runs `main` too (orchestrator/__main__.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from orchestrator.commands import (
    augment,
    demo,
    export,
    fashion_mnist,
    fetch_model,
    import_onnx,
    models,
    predict,
    predictions,
    prepare,
    train,
    upload,
)
from orchestrator.errors import EXIT_CODES_HELP, CommandError
from orchestrator.report import printable
from orchestrator.session import add_arguments, session_from_args

# Sub-commands in the order --help lists them.
COMMANDS = (upload, fashion_mnist, augment, prepare, train, export, import_onnx, fetch_model, models, predict,
            predictions, demo)

EPILOG = """\
examples:
  orchestrator upload photos/ --prefix raw           # class sub-folders into the store
  orchestrator augment --source raw --output augmented
  orchestrator --stack-name dlpipe augment ...      # the same, on AWS Lambda

Run `orchestrator COMMAND --help` for a command's options.

""" + EXIT_CODES_HELP


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Serverless deep-learning pipeline: augment images, train SqueezeNet "
                    "data-parallel, and serve predictions, on AWS Lambda or on this machine.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (kill, a CI runner's timeout) stops the workers as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        session = session_from_args(args)
    except CommandError as err:
        print(f"error: {printable(err)}", file=sys.stderr)
        return err.code
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        return int(args.run(args, session) or 0)
    except CommandError as err:
        print(f"error: {printable(err)}", file=sys.stderr)   # it may quote a name from a folder or a file
        return err.code
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        session.close(abort=interrupted)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
