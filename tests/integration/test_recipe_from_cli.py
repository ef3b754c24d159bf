"""The fine-tuning path through the CLI: prepare --recipe-from MODEL, then train --init-from MODEL, export, models.

A small servable version (24 px, its own mean/std) stands in for the pretrained SqueezeNet,
so this runs everywhere, without ../shared; the real handlers run on the local invoker.
"""

from __future__ import annotations

import json

import imagefiles as f
import pytest

from dlpipe.datasets import manifest as manifests
from dlpipe.publish.export import export_model
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import DirStore
from dlpipe.train.model import build_model, model_config_for
from orchestrator.cli import main

RECIPE = Recipe(size=24, channels=3, mean=(0.5, 0.45, 0.4), std=(0.25, 0.25, 0.25))
pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    config = model_config_for(RECIPE, ["x", "y", "z"])
    export_model(build_model(config), DirStore(home / "models"), "base", list(config.labels), RECIPE,
                 source={"kind": "run", "run": "seed", "round": 0, "init_from": None, "trainable": "all"},
                 config=config)
    data = DirStore(home / "data")
    for cls, seed in (("cats", 0), ("dogs", 50)):
        for i in range(8):
            data.put(f"raw/{cls}/{i}.jpg", f.jpeg(40, 30, seed=seed + i))
    return home


def test_prepare_recipe_from_then_train_init_from_succeeds(home, tmp_path, capsys):
    where = ["--home", str(home), "--concurrency", "2"]
    assert main([*where, "prepare", "--source", "raw", "--dataset", "own", "--workers", "2", "--size", "24"]) == 0
    capsys.readouterr()
    assert main([*where, "train", "--dataset", "own", "--run", "refused", "--rounds", "1",
                 "--init-from", "base"]) == 2                 # the default recipe is not the model's
    assert "--recipe-from base:v1" in capsys.readouterr().err

    assert main([*where, "prepare", "--source", "raw", "--dataset", "ft", "--workers", "2",
                 "--recipe-from", "base"]) == 0
    out = capsys.readouterr().out
    assert "(model base's)" in out and "next: orchestrator train --dataset ft --run RUN --rounds 3 " \
                                      "--init-from base:v1" in out
    manifest = json.loads(DirStore(home / "data").get(manifests.manifest_key("ft")))
    assert Recipe.from_dict(manifest["recipe"]) == RECIPE

    assert main([*where, "train", "--dataset", "ft", "--run", "ft", "--rounds", "1", "--init-from", "base",
                 "--output", str(tmp_path / "out")]) == 0
    assert "1 completed" in capsys.readouterr().out
    assert main([*where, "export", "--run", "ft"]) == 0
    capsys.readouterr()
    assert main([*where, "models", "--json"]) == 0
    versions = {(e["name"], e["version"]): e for e in json.loads(capsys.readouterr().out)}
    ft = versions[("ft", "v1")]
    assert ft["source"]["init_from"]["model"] == "base" and ft["source"]["init_from"]["version"] == "v1"
    assert ft["source"]["trainable"] == "classifier" and ft["can_seed"]
    assert main([*where, "models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("ft "))
    assert " ".join(row.split()).endswith("run ft round 1 base v1 classifier only yes")
