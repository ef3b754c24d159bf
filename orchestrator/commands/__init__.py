"""The orchestrator's sub-commands: one module each, registered by orchestrator.cli."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from orchestrator.errors import EXIT_CODES_HELP


def add_command(subparsers, name: str, *, help: str, description: str, examples: str,
                run: Callable[..., int]) -> argparse.ArgumentParser:
    """A sub-command's parser, with its examples kept as written under the options."""
    parser = subparsers.add_parser(name, help=help, description=description,
                                   epilog=f"{examples.rstrip()}\n\n{EXIT_CODES_HELP}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run)
    return parser
