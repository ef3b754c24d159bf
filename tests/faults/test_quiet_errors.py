"""An expected error after TensorFlow has loaded (a label count) is one line: no TensorFlow start-up chatter
without --verbose. In a fresh process, where TensorFlow's start-up lines really are written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx

from tests.unit.test_onnx_import import make_squeezenet_onnx

REPO = Path(__file__).resolve().parents[2]


def test_a_label_count_error_of_import_onnx_is_one_line(tmp_path):
    onnx.save(make_squeezenet_onnx("1.1", 50, classes=10), tmp_path / "net.onnx")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    done = subprocess.run([sys.executable, "-m", "orchestrator", "--home", str(tmp_path / "home"), "import-onnx",
                           str(tmp_path / "net.onnx"), "--labels", str(tmp_path / "labels.txt")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[-1].endswith("the labels file has 2 names but the model has 10 classes"), done.stderr
    assert len(lines) == 2 and lines[0].startswith("importing "), done.stderr   # the notice, the error: no more
