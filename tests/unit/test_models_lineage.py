"""`orchestrator models`: each version's lineage (from where, fine-tuned from what, what trained, can it seed a run)."""

from __future__ import annotations

import json

import pytest

from dlpipe.shared.store import DirStore
from orchestrator.cli import main

START = {"model": "squeezenet1.1", "version": "v1", "weights_sha256": "ab" * 32, "kept_classifier": False}
VERSIONS = {   # (model, version): (meta.json's source, whether model.json and weights.npz are kept)
    ("squeezenet1.1", "v1"): ({"kind": "onnx", "file": "squeezenet1.1-7.onnx", "sha256": "cd" * 32,
                               "architecture": "SqueezeNet 1.1"}, True),
    ("flowers", "v1"): ({"kind": "run", "run": "fl", "round": 3, "init_from": START, "trainable": "classifier"},
                        True),
    ("flowers", "v2"): ({"kind": "run", "run": "fl2", "round": 1, "init_from": {**START, "model": "flowers"},
                         "trainable": "all"}, True),
    ("fm", "v1"): ({"kind": "run", "run": "fm", "round": 5, "init_from": None, "trainable": "all"}, True),
    ("old", "v1"): ({"kind": "run", "run": "old", "round": 2}, False),     # exported before lineage was kept
}


@pytest.fixture
def home(tmp_path):
    store = DirStore(tmp_path / "home" / "models")
    for (name, version), (source, seeds) in VERSIONS.items():
        meta = {"name": name, "version": version, "created": "2025-05-01T10:20:30+00:00", "source": source,
                "input_shape": [224, 224, 3], "classes": 4}
        if seeds:
            store.put(f"models/{name}/{version}/model.json", b"{}")
            store.put(f"models/{name}/{version}/weights.npz", b"npz")
        store.put(f"models/{name}/{version}/meta.json", json.dumps(meta).encode())
        store.put(f"models/{name}/latest", version.encode())
    return tmp_path / "home"


def test_the_table_shows_where_each_version_came_from_and_whether_it_can_seed_a_run(home, capsys):
    assert main(["--home", str(home), "models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:4] == ["model", "version", "classes", "input"] and lines[0].rstrip().endswith("seeds a run")
    rows = {tuple(line.split()[:2]): " ".join(line.split()) for line in lines[1:6]}
    assert rows[("squeezenet1.1", "v1")].endswith("ONNX squeezenet1.1-7.onnx (SqueezeNet 1.1) - - yes")
    assert rows[("flowers", "v1")].endswith("run fl round 3 squeezenet1.1 v1 classifier only yes")
    assert rows[("flowers", "v2")].endswith("run fl2 round 1 flowers v1 all layers yes")
    assert "*" in rows[("flowers", "v2")] and "*" not in rows[("flowers", "v1")]
    assert rows[("fm", "v1")].endswith("run fm round 5 scratch all layers yes")
    assert rows[("old", "v1")].endswith("run old round 2 ? ? no")
    assert "2025-05-01 10:20" in rows[("fm", "v1")]
    out = "\n".join(lines)
    assert "cannot seed a run serves as before" in out and "export --run RUN" in out
    column = lines[0].index("seeds a run")       # an aligned table: every row's last column starts there
    assert all(line[column:column + 3] in ("yes", "no") for line in lines[1:6])


def test_json_keeps_meta_and_adds_latest_and_can_seed(home, capsys):
    assert main(["--home", str(home), "models", "--json"]) == 0
    entries = {(e["name"], e["version"]): e for e in json.loads(capsys.readouterr().out)}
    assert entries[("flowers", "v1")]["source"]["init_from"] == START
    assert entries[("flowers", "v1")]["source"]["trainable"] == "classifier"
    assert [entries[k]["can_seed"] for k in VERSIONS] == [seeds for _, seeds in VERSIONS.values()]
    assert entries[("flowers", "v2")]["latest"] and not entries[("flowers", "v1")]["latest"]


def test_no_models_says_how_to_get_one(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "models"]) == 0
    assert "run `orchestrator fetch-model`" in capsys.readouterr().out
