"""Every benchmark still runs: each script in bench/ at its --smoke size, as a user runs it.

A script is a file of bench/ that runs as a program (it has an `if __name__ == "__main__":`
block); the others (tables.py, sleep_handler.py) are modules the scripts import. The scripts are
found, not listed, so a new one is covered the day it lands, and one without --smoke fails here.
Each must exit 0, print its table (bench/tables.py's, plain or Markdown) and keep TensorFlow's,
absl's and the workers' lines off the console, as the commands do without --verbose.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED
from integration.test_quiet_console import CHATTER  # what TensorFlow, absl and oneDNN print (tests/ on sys.path)

from orchestrator.settings import Placement

REPO = Path(__file__).resolve().parents[2]
MAIN_BLOCK = re.compile(r'^if __name__ == "__main__":', re.MULTILINE)
# The rule under a table's header: "  -----  ---" (tables.table) or "|-----|---|" (tables.markdown_table).
TABLE_RULE = re.compile(r"^(\s*-{3,}(\s+-{3,})+|\|(-+\|)+)\s*$", re.MULTILINE)
pytestmark = pytest.mark.slow
# Scripts whose smoke size reads ../shared material: a user's fresh clone has none, so they skip without it.
NEEDS_SHARED = {"finetune.py": ("photos/flowers12", "models")}


def scripts() -> list[Path]:
    return sorted(p for p in (REPO / "bench").glob("*.py") if MAIN_BLOCK.search(p.read_text()))


def test_the_benchmark_scripts_are_found():
    names = {p.name for p in scripts()}
    assert {"invoker.py", "predict.py", "memory.py", "scale.py", "worker_memory.py"} <= names
    assert not names & {"tables.py", "sleep_handler.py"}


@pytest.mark.parametrize("script", scripts(), ids=lambda p: p.name)
def test_each_benchmark_runs_at_its_smoke_size_and_prints_its_table_quietly(script, tmp_path):
    missing = [SHARED / part for part in NEEDS_SHARED.get(script.name, ()) if not (SHARED / part).is_dir()]
    if missing:
        pytest.skip(f"bench/{script.name} --smoke reads {', '.join(map(str, missing))}: absent here (the test "
                    "material lives in ../shared beside the repo)")
    env = {k: v for k, v in os.environ.items()
           if k not in Placement.ENV.values() and k not in ("TF_CPP_MIN_LOG_LEVEL", "POWERTOOLS_LOG_LEVEL")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "layers" / "shared"), str(REPO)])
    done = subprocess.run([sys.executable, str(script), "--smoke"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    output = done.stdout + done.stderr
    assert "unrecognized arguments: --smoke" not in done.stderr, f"bench/{script.name} has no --smoke size"
    assert done.returncode == 0, output[-5000:]
    assert TABLE_RULE.search(done.stdout), f"bench/{script.name} printed no table:\n{output[-3000:]}"
    assert CHATTER.findall(output) == [], f"bench/{script.name} is not quiet without --verbose:\n{output[-3000:]}"
