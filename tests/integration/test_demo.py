"""The README's main command, `orchestrator demo`, at a small size."""

from __future__ import annotations

import json
import socket

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dlpipe.datasets import fashion_mnist as fm
from orchestrator.cli import main
from orchestrator.commands import demo
from orchestrator.commands.fashion_mnist import BUNDLED_SIZES
from orchestrator.settings import ENV_CACHE


def _no_network(*args, **kwargs):
    raise OSError("network unreachable (blocked by the test)")


def test_the_demo_s_first_step_needs_no_network_and_no_debian_package(tmp_path, monkeypatch, capsys):
    """A fresh machine: empty HOME and cache, no Debian package, no network (every socket refuses)."""
    for name in ("HOME", ENV_CACHE):
        monkeypatch.setenv(name, str(tmp_path / "empty" / name))
    monkeypatch.setattr(fm, "FASHION_MNIST_DIRS", (str(tmp_path / "no-debian-package"),))
    monkeypatch.setattr(fm, "FASHION_MNIST_URL", "http://fashion-mnist.invalid/")
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)
    home = tmp_path / "home"
    step = demo.first_step(demo.FASHION_DEFAULTS["images"])
    assert main(["--home", str(home), *step]) == 0, capsys.readouterr()
    for split, count in BUNDLED_SIZES.items():
        assert len(list((home / "data" / "fashion-mnist" / split).rglob("*.png"))) == count
    # The same machine without the subset: the full set is out of reach, so the subset is what worked.
    assert main(["--home", str(tmp_path / "home2"), *demo.first_step(BUNDLED_SIZES["train"] + 1)]) != 0
    err = capsys.readouterr().err
    assert "Fashion-MNIST is not on this machine" in err and "blocked by the test" in err, err


@pytest.mark.slow
def test_demo_runs_every_step_and_leaves_its_outputs(tmp_path, capsys):
    home = tmp_path / "home"
    status = main(["--home", str(home), "--concurrency", "2", "demo", "--images", "400", "--rounds", "1",
                   "--local-epochs", "1"])
    out = capsys.readouterr().out
    assert status == 0, out
    for step in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6"):
        assert f"=== {step}" in out
    assert "images               10 (10 predicted, 0 failed)" in out
    metrics = json.loads((home / "demo" / "demo-metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1]
    assert (home / "demo" / "demo-metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert (home / "demo" / "predictions.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((home / "data" / "augmented" / "fashion-mnist-train").rglob("*.png"))) == 800
    assert "validation accuracy" in out and "billed" in out
    board = EventAccumulator(str(home / "tensorboard" / "demo" / "validation"))    # `tensorboard --logdir HOME`
    board.Reload()
    assert [e.step for e in board.Scalars("accuracy")] == [1]
    assert board.Scalars("accuracy")[0].value == pytest.approx(metrics["rounds"][0]["val"]["accuracy"])
