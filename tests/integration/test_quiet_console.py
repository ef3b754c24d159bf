"""No TensorFlow, absl or oneDNN lines on the console without --verbose; all of them with it.

The commands run as a user runs them, `python -m orchestrator` in a subprocess, with the
console's file descriptors captured: that is where TensorFlow's C++ logging lands (from this
process for import-onnx, from the local workers for prepare and train).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import imagefiles as f
import onnx
import pytest
from unit.test_onnx_import import make_squeezenet_onnx  # tests/unit, through tests/ on sys.path

from dlpipe.shared.store import DirStore
from orchestrator.settings import Placement

REPO = Path(__file__).resolve().parents[2]
# What TensorFlow, absl, oneDNN, the TFLite converter and LiteRT print (not our own words).
CHATTER = re.compile(r"oneDNN|absl::|^[IWE]\d{4} |MLIR|SavedModel|cpu_feature_guard|XNNPACK|WARNING:tensorflow",
                     re.MULTILINE)
pytestmark = pytest.mark.slow


def orchestrator(home: Path, *argv: str) -> str:
    """stdout and stderr of `python -m orchestrator --home HOME ARGV`, which must succeed."""
    env = {k: v for k, v in os.environ.items()
           if k not in Placement.ENV.values() and k not in ("TF_CPP_MIN_LOG_LEVEL", "POWERTOOLS_LOG_LEVEL")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "layers" / "shared"), str(REPO)])
    done = subprocess.run([sys.executable, "-m", "orchestrator", "--home", str(home), "--concurrency", "1", *argv],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_import_onnx_is_quiet_unless_verbose(tmp_path):
    net = tmp_path / "net.onnx"
    onnx.save(make_squeezenet_onnx("1.1", 50), net)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"c{i}\n" for i in range(10)))
    quiet = orchestrator(tmp_path / "home", "import-onnx", str(net), "--labels", str(labels))
    assert "net v1 (now latest)" in quiet
    assert CHATTER.findall(quiet) == [], quiet
    loud = orchestrator(tmp_path / "home", "--verbose", "import-onnx", str(net), "--labels", str(labels))
    assert "net v2 (now latest)" in loud and CHATTER.search(loud), loud      # the chatter is real


def test_prepare_and_train_are_quiet_and_the_workers_log_keeps_their_output(tmp_path):
    home = tmp_path / "home"
    data = DirStore(home / "data")
    for cls, seed in (("a", 0), ("b", 40)):
        for i in range(6):
            data.put(f"raw/{cls}/{i}.jpg", f.jpeg(32, 24, seed=seed + i))
    prepared = orchestrator(home, "prepare", "--source", "raw", "--dataset", "tiny", "--workers", "1", "--size", "16")
    trained = orchestrator(home, "train", "--dataset", "tiny", "--run", "t", "--rounds", "1", "--batch-size", "4",
                           "--output", str(tmp_path / "out"))
    assert "1 completed" in trained
    for output in (prepared, trained):
        assert CHATTER.findall(output) == [], output
    assert CHATTER.search((home / "logs" / "workers.log").read_text())     # where the workers' went
    loud = orchestrator(home, "--verbose", "train", "--dataset", "tiny", "--run", "t2", "--rounds", "1",
                        "--batch-size", "4", "--output", str(tmp_path / "out"))
    assert CHATTER.search(loud), loud
