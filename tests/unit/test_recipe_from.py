"""`prepare --recipe-from MODEL[:VERSION]`: the recipe of a servable version, or a clear refusal before any work."""

from __future__ import annotations

import argparse
import json

import pytest
from imagefiles import encode, photo

from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import DirStore
from orchestrator.cli import main
from orchestrator.commands import prepare

RECIPES = {"v1": Recipe(size=24, channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2)),
           "v2": Recipe(size=40, channels=1)}


@pytest.fixture
def models(tmp_path) -> DirStore:
    """Model `tiny` with versions v1 and v2 (latest), as export writes their recipe and meta."""
    store = DirStore(tmp_path / "home" / "models")
    for version, recipe in RECIPES.items():
        store.put(f"models/tiny/{version}/recipe.json", json.dumps(recipe.to_dict()).encode())
        store.put(f"models/tiny/{version}/meta.json", json.dumps({"name": "tiny", "version": version}).encode())
    store.put("models/tiny/latest", b"v2")
    store.put("models/norecipe/v1/meta.json", b"{}")
    store.put("models/norecipe/latest", b"v1")
    data = DirStore(tmp_path / "home" / "data")   # images that a prepare which went ahead would pack
    for cls in ("a", "b"):
        data.put(f"raw/{cls}/1.png", encode(photo(30, 20), "PNG"))
    return store


class FakeSession:
    def __init__(self, store) -> None:
        self.store = store

    def model_store(self):
        return self.store


def args_for(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    prepare.register(parser.add_subparsers())
    return parser.parse_args(["prepare", "--source", "raw", "--dataset", "d", "--workers", "1", *argv])


@pytest.mark.parametrize("ref, version", [("tiny", "v2"), ("tiny:v1", "v1"), ("tiny:v2", "v2")])
def test_the_recipe_is_the_versions_own_and_the_default_version_is_the_latest(models, ref, version):
    recipe, resolved = prepare.recipe_for(args_for("--recipe-from", ref), FakeSession(models))
    assert recipe == RECIPES[version] and resolved == f"tiny:{version}"
    default, none = prepare.recipe_for(args_for(), FakeSession(models))
    assert none is None and default == Recipe(size=32, channels=3)


REFUSED = {
    "with --recipe": (["--recipe-from", "tiny", "--recipe", "imagenet"], "drop --recipe"),
    "with the fields": (["--recipe-from", "tiny", "--size", "64", "--mean", "0.5"], "drop --size, --mean"),
    "unknown model": (["--recipe-from", "nope"], "--recipe-from nope: unknown model 'nope'; known models: "
                                                 "norecipe, tiny"),
    "unknown version": (["--recipe-from", "tiny:v9"], "model 'tiny' has no version 'v9'; versions: v1, v2"),
    "no recipe.json": (["--recipe-from", "norecipe"], "model norecipe v1 has no recipe.json"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_refusals_exit_2_naming_the_problem_before_any_work(models, tmp_path, capsys, case):
    argv, message = REFUSED[case]
    code = main(["--home", str(tmp_path / "home"), "prepare", "--source", "raw", "--dataset", "d",
                 "--workers", "1", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not list((tmp_path / "home" / "data").rglob("*.npz"))
