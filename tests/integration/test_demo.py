"""The README's main command, `orchestrator demo`, at a small size."""

from __future__ import annotations

import json

import pytest

from orchestrator.cli import main


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
