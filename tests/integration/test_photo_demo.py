"""`orchestrator demo --photos DIR --pretrained FILE.onnx`: fine-tuning on a user's class folders, in one command.

A small flowers12 subset (4 classes x 10 photos, in DIR/<class>/ as a user would have them)
and the pretrained SqueezeNet 1.1 from ../shared (skips without it); the real handlers on
the local invoker.
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import SHARED

from dlpipe.shared.store import DirStore
from orchestrator.cli import main

PHOTOS = SHARED / "photos" / "flowers12" / "train"
CLASSES = ["daisy", "dandelion", "sunflower", "tigerlily"]
pytestmark = pytest.mark.slow


@pytest.fixture
def flowers(tmp_path):
    if not (PHOTOS.is_dir() and (SHARED / "models" / "squeezenet1.1.onnx").is_file()):
        pytest.skip(f"{SHARED} (flowers12 photos and the pretrained ONNX) is absent: it lives beside the repo")
    for name in CLASSES:
        (tmp_path / "flowers" / name).mkdir(parents=True)
        for path in sorted((PHOTOS / name).glob("*.jpg"))[:10]:
            shutil.copy(path, tmp_path / "flowers" / name / path.name)
    return tmp_path / "flowers"


def relative(store: DirStore, prefix: str) -> set[str]:
    return {key[len(prefix):] for key in store.list(prefix)}


def test_the_photo_demo_fine_tunes_on_class_folders_and_holds_out_photos(flowers, tmp_path, capsys):
    home = tmp_path / "home"
    where = ["--home", str(home), "--concurrency", "2"]
    status = main([*where, "demo", "--photos", str(flowers), "--pretrained", str(SHARED / "models" /
                   "squeezenet1.1.onnx"), "--labels", str(SHARED / "models" / "imagenet_synset_words.txt"),
                   "--rounds", "2", "--local-epochs", "3"])
    out = capsys.readouterr().out
    assert status == 0, out
    for step in range(1, 8):
        assert f"=== {step}/7" in out
    assert "--recipe-from squeezenet1.1:v1" in out and "--init-from squeezenet1.1:v1" in out

    data = DirStore(home / "data")
    train, test = relative(data, "photos/flowers/train/"), relative(data, "photos/flowers/test/")
    assert len(train) == 32 and len(test) == 8 and not train & test
    assert {name.split("/")[0] for name in test} == set(CLASSES)            # 2 held out of each class
    augmented = relative(data, "augmented/flowers/")
    assert {a.replace("__original", "").replace("__flip", "") for a in augmented} == train   # no held-out photo

    assert "images               4 (4 predicted, 0 failed)" in out        # one held-out photo per class
    accuracy = next(line for line in out.splitlines() if line.strip().startswith("validation accuracy"))
    assert float(accuracy.split()[-1].rstrip("%")) > 50                   # 4 classes: chance is 25%
    for name in ("flowers-metrics.png", "flowers-predictions.png"):
        assert (home / "demo" / name).read_bytes()[:4] == b"\x89PNG"

    assert main([*where, "models", "--json"]) == 0
    versions = {(e["name"], e["version"]): e for e in json.loads(capsys.readouterr().out)}
    assert set(versions) == {("squeezenet1.1", "v1"), ("flowers", "v1")}
    fine_tuned = versions[("flowers", "v1")]
    assert fine_tuned["source"]["init_from"]["model"] == "squeezenet1.1"
    assert fine_tuned["source"]["trainable"] == "classifier" and fine_tuned["can_seed"]
    assert json.loads(DirStore(home / "models").get("models/flowers/v1/labels.json")) == CLASSES
