"""The check that the Lambda layer was built for the Python and CPU that load it.

The layer holds compiled wheels (numpy, Pillow, LiteRT) for one Python version and one
architecture, chosen when it is built (LAMBDA_PYTHON, LAMBDA_ARCH); the functions' runtime
and architecture are chosen when the stack is deployed (PythonRuntime, Architecture). If
the two differ, numpy fails deep in its import with a message that does not name the cause.
The layer's makefile writes `layer_target.json` beside this module, and importing dlpipe
checks it first, so the function fails at once with a message that says what to do.
Outside the built layer (a checkout, the train image) there is no marker and nothing to check.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

MARKER = Path(__file__).resolve().parents[1] / "layer_target.json"  # dlpipe/layer_target.json
ARCHITECTURES = {"x86_64": "x86_64", "aarch64": "arm64"}  # platform.machine() -> Lambda's name
MACHINES = {arch: machine for machine, arch in ARCHITECTURES.items()}  # Lambda's name -> platform.machine()


class LayerMismatch(ImportError):
    """The layer's compiled libraries cannot load in this Python or on this CPU."""


def check_layer_target(marker: Path = MARKER, python: str | None = None, machine: str | None = None) -> None:
    if not marker.is_file():
        return
    built = json.loads(marker.read_text())
    python = python or f"{sys.version_info[0]}.{sys.version_info[1]}"
    machine = machine or platform.machine()
    if (built.get("python"), built.get("machine")) == (python, machine):
        return
    arch = ARCHITECTURES.get(machine, machine)
    raise LayerMismatch(
        f"the shared layer was built for Python {built.get('python')} on {built.get('machine')}, but this "
        f"function runs Python {python} on {machine}: build the layer for the stack's runtime and "
        f"architecture, e.g. `LAMBDA_PYTHON={python} LAMBDA_ARCH={arch} sam build --parameter-overrides "
        f"PythonRuntime=python{python} Architecture={arch}`, then deploy with the same overrides")
