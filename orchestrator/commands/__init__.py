"""The orchestrator's sub-commands: one module each, registered by orchestrator.cli."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable

from orchestrator.errors import EXIT_CODES_HELP, CommandError

# What the package's [train] extra installs (pyproject.toml), by import name.
TRAIN_EXTRA = ("tensorflow", "keras", "onnx")


def add_command(subparsers, name: str, *, help: str, description: str, examples: str,
                run: Callable[..., int]) -> argparse.ArgumentParser:
    """A sub-command's parser, with its examples kept as written under the options."""
    parser = subparsers.add_parser(name, help=help, description=description,
                                   epilog=f"{examples.rstrip()}\n\n{EXIT_CODES_HELP}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run)
    return parser


def require_train_extra(what: str, modules: tuple[str, ...] = TRAIN_EXTRA) -> None:
    """Stop with what to install, before any work, when TensorFlow & co are not installed (`pip install .`)."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise CommandError(f"{what} needs {', '.join(missing)}, not installed here: install the package's "
                           "[train] extra, e.g. `pip install '.[train]'` (or `pipx install --force '.[train]'`) "
                           "in the repository")
