"""The deployed functions as the orchestrator knows them.

Memory and timeout mirror template.yaml (a unit test keeps them in step), so that the
local invoker enforces the same time limit and reports the same billed GB-seconds that
Lambda would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# The handlers run by path (the local invoker): functions/ of a checkout, or the copy an installed
# orchestrator carries (`pip install .`: pyproject.toml packages them as orchestrator/handlers/).
FUNCTIONS_DIR = REPO_ROOT / "functions" if (REPO_ROOT / "template.yaml").is_file() \
    else Path(__file__).resolve().parent / "handlers"


@dataclass(frozen=True)
class FunctionSpec:
    name: str            # logical name used by the orchestrator and the CLI
    handler: str         # "path/to/app.py:function", relative to the repository
    memory_mb: int
    timeout_s: int
    output: str          # the CloudFormation output holding the deployed function name

    @property
    def handler_path(self) -> Path:
        path = Path(self.handler.split(":")[0])
        if path.parts[:1] == ("functions",):  # the functions' own handlers, wherever this install keeps them
            return FUNCTIONS_DIR.joinpath(*path.parts[1:])
        return REPO_ROOT / path

    @property
    def handler_name(self) -> str:
        return self.handler.split(":")[1]


FUNCTIONS: dict[str, FunctionSpec] = {
    spec.name: spec
    for spec in (
        FunctionSpec("augment", "functions/augment/app.py:handler", 1024, 300, "AugmentFunctionName"),
        FunctionSpec("train", "functions/train/app.py:handler", 4096, 900, "TrainFunctionName"),
        FunctionSpec("predict", "functions/predict/app.py:handler", 1024, 30, "PredictFunctionName"),
    )
}


def function_spec(name: str) -> FunctionSpec:
    try:
        return FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown function {name!r}; known: {', '.join(FUNCTIONS)}") from None
