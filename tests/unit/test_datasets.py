"""Fashion-MNIST loading, the prepare plan (split/shard/part) and the dataset manifest."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlpipe.datasets import fashion_mnist as fm
from dlpipe.datasets import manifest as manifests
from dlpipe.datasets import split as planning
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import DirStore
from dlpipe.wire import PackRequest
from orchestrator.settings import download_cache_dir

FASHION = Path(fm.FASHION_MNIST_DIRS[0])


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def test_read_idx_plain_gzipped_and_damaged():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(fm.read_idx(idx_bytes(images)), images)
    assert np.array_equal(fm.read_idx(gzip.compress(idx_bytes(images))), images)
    ints = np.array([1, -2, 70000], ">i4")
    assert fm.read_idx(idx_bytes(ints)).tolist() == [1, -2, 70000]
    with pytest.raises(ValueError, match="truncated"):
        fm.read_idx(idx_bytes(images)[:-1])
    with pytest.raises(ValueError, match="bad magic"):
        fm.read_idx(b"PK\x03\x04 not idx")


def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([9, 0, 3, 3, 1], np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    x, y = fm.load_fashion_mnist("test", directory=tmp_path)
    assert np.array_equal(x, images) and np.array_equal(y, labels)
    pngs = list(fm.fashion_mnist_pngs("test", limit=2, directory=tmp_path))
    assert [key for key, _ in pngs] == ["test/ankle-boot/00000.png", "test/tshirt-top/00001.png"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(pngs[0][1]))), images[0])
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.gz is not in"):
        fm.load_fashion_mnist("train", directory=tmp_path)
    with pytest.raises(ValueError, match="splits 'train'/'test'"):
        fm.fashion_mnist_file("validation", "images", directory=tmp_path)


def test_the_real_fashion_mnist_files_when_installed():
    if not (FASHION / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"{FASHION} is absent (Debian package dataset-fashion-mnist; .ci/run installs it)")
    x, y = fm.load_fashion_mnist("test", download=False)
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10


def items_for(classes: dict[str, int], prefix: str = "src") -> list[tuple[str, str]]:
    return [(f"{prefix}/{c}/{i:04d}.png", c) for c, n in classes.items() for i in range(n)]


def test_plan_is_deterministic_balanced_and_stable_under_additions():
    classes = ["cat", "dog", "owl"]
    items = items_for({"cat": 300, "dog": 200, "owl": 100})
    plan = planning.plan_dataset(items, classes, workers=3, val_fraction=0.2, part_size=70, source_prefix="src")
    again = planning.plan_dataset(list(reversed(items)), classes, workers=3, val_fraction=0.2, part_size=70,
                                  source_prefix="src")
    assert plan.shards == again.shards and plan.val_parts == again.val_parts
    train = [item for shard in plan.shards for part in shard for item in part]
    val = [item for part in plan.val_parts for item in part]
    assert len(train) + len(val) == 600 and not {k for k, _ in train} & {k for k, _ in val}
    assert 0.15 < len(val) / 600 < 0.25
    sizes = [sum(len(p) for p in shard) for shard in plan.shards]
    assert max(sizes) - min(sizes) <= 1
    assert all(len(part) <= 70 for shard in plan.shards for part in shard)
    assert len(plan.val_parts) == 3  # one per worker, so evaluation fans out as wide as training
    # Every shard mixes the classes (the order is a hash, not the listing order).
    for shard in plan.shards:
        assert {label for part in shard for _, label in part} == {0, 1, 2}
    # Labels follow the sorted class names.
    assert all(key.split("/")[1] == classes[label] for key, label in train + val)
    # More images later: none of the old ones changes split; moving the whole prefix changes nothing.
    bigger = planning.plan_dataset(items + items_for({"cat": 50}, "src/new"), classes, workers=3,
                                   val_fraction=0.2, source_prefix="src")
    old_val = {k for k, _ in val}
    new_val = {k for part in bigger.val_parts for k, _ in part}
    assert old_val <= new_val
    moved = planning.plan_dataset([("elsewhere/" + k[4:], c) for k, c in items], classes, workers=3,
                                  val_fraction=0.2, part_size=70, source_prefix="elsewhere")
    assert {k[10:] for part in moved.val_parts for k, _ in part} == {k[4:] for k in old_val}


def test_plan_with_a_separate_validation_source_and_bad_inputs():
    classes = ["a", "b"]
    plan = planning.plan_dataset(items_for({"a": 10, "b": 10}), classes, workers=2, val_fraction=0.5,
                                 val_items=items_for({"a": 3, "b": 3}, "test"))
    assert plan.counts["train"] == 20 and plan.counts["val"] == 6
    with pytest.raises(ValueError, match="validation class folder 'c'"):
        planning.plan_dataset(items_for({"a": 4}), ["a"], workers=1, val_items=items_for({"c": 1}, "test"))
    with pytest.raises(ValueError, match="cannot be spread over 5 workers"):
        planning.plan_dataset(items_for({"a": 3}), ["a"], workers=5, val_fraction=0.0)
    with pytest.raises(ValueError, match="val_fraction"):
        planning.plan_dataset(items_for({"a": 3}), ["a"], workers=1, val_fraction=1.0)


def test_list_class_folders(tmp_path):
    store = DirStore(tmp_path)
    for key in ("src/b/1.png", "src/a/2.JPG", "src/a/deep/3.png", "src/readme.txt", "src/top.png", "src/a/notes.txt"):
        store.put(key, b"x")
    classes, items = planning.list_class_folders(store, "src/")
    assert classes == ["a", "b"]
    assert sorted(items) == [("src/a/2.JPG", "a"), ("src/a/deep/3.png", "a"), ("src/b/1.png", "b")]
    with pytest.raises(ValueError, match=r"expected empty/<class>/<image>.png"):
        planning.list_class_folders(store, "empty")


# --- Fashion-MNIST without the network -----------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # nothing listens there once the socket is closed


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No Debian package, an empty download cache, and a download address that refuses connections."""
    monkeypatch.setattr(fm, "FASHION_MNIST_DIRS", (str(tmp_path / "not-installed"),))
    monkeypatch.setattr(fm, "FASHION_MNIST_URL", f"http://127.0.0.1:{closed_port()}/")
    monkeypatch.setenv("DLPIPE_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_a_failed_download_names_the_file_the_address_and_the_reason(offline):
    with pytest.raises(fm.DownloadFailed, match=r"t10k-images-idx3-ubyte.gz is not in .*not-installed.* and "
                                                r"downloading it from http://127.0.0.1:\d+/t10k-images-idx3-ubyte.gz "
                                                r"failed \(.*refused") as caught:
        fm.load_fashion_mnist("test", cache=download_cache_dir())
    assert caught.value.cache == offline / "cache" / "fashion-mnist"


def test_the_command_offline_says_what_failed_and_the_ways_out(offline, capsys):
    from orchestrator.cli import main

    assert main(["--home", str(offline / "home"), "fashion-mnist", "--limit", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Fashion-MNIST is not on this machine: train-images-idx3-ubyte.gz is not in ")
    assert "Connection refused" in err and "Traceback" not in err
    assert "install the Debian package dataset-fashion-mnist" in err and "--idx-dir DIR" in err
    assert str(offline / "cache" / "fashion-mnist") in err


def test_the_command_reads_the_idx_files_given_with_idx_dir(offline, capsys):
    from orchestrator.cli import main

    images = np.random.default_rng(1).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    folder = offline / "idx"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.array([1, 2, 1, 0], np.uint8))))
    home = offline / "home"
    assert main(["--home", str(home), "fashion-mnist", "--splits", "test", "--limit", "3",
                 "--idx-dir", str(folder)]) == 0
    written = sorted(p.relative_to(home / "data").as_posix() for p in (home / "data").rglob("*.png"))
    assert written == ["fashion-mnist/test/pullover/00001.png", "fashion-mnist/test/trouser/00000.png",
                       "fashion-mnist/test/trouser/00002.png"]
    assert main(["--home", str(home), "fashion-mnist", "--splits", "train", "--idx-dir", str(folder)]) == 2
    assert "train-images-idx3-ubyte.gz is not in" in capsys.readouterr().err


# --- the manifest ---------------------------------------------------------------------------

RECIPE_DICT = {"size": 32, "channels": 1, "color_order": "RGB", "resize": "stretch", "resize_shorter": None,
               "pad": 2, "scale": 1 / 255, "mean": [0.0], "std": [1.0]}
SHARDS = [{"parts": ["datasets/fm/train/shard-000/part-000-0123456789abcdef.npz"], "count": 7},
          {"parts": ["datasets/fm/train/shard-001/part-000-fedcba9876543210.npz"], "count": 6}]
VAL = {"parts": ["datasets/fm/val/part-000-00112233445566aa.npz"], "count": 3}


def first_format_manifest() -> dict:
    """A manifest exactly as `prepare` wrote it before the schema existed (a plain dict)."""
    return {
        "format": 1, "dataset": "fm", "source": "fashion-mnist/train", "val_source": None, "val_fraction": 0.2,
        "classes": ["bag", "coat"], "recipe": RECIPE_DICT, "shards": SHARDS, "val": VAL,
        "created": "2025-01-02T03:04:05Z",
        "id": hashlib.sha256(json.dumps([["bag", "coat"], RECIPE_DICT, SHARDS, VAL], sort_keys=True).encode()
                             ).hexdigest()[:16],
        "counts": {"train": 13, "val": 3, "skipped": 1, "train_per_class": {"bag": 7, "coat": 6}},
        "skipped": [{"key": "fashion-mnist/train/bag/x.png", "reason": "ImageError: empty file (0 bytes)"}],
        "bytes": 12345,
    }


def test_manifests_written_before_the_schema_still_load_and_keep_their_fields(tmp_path):
    store = DirStore(tmp_path)
    old = first_format_manifest()
    store.put(manifests.manifest_key("fm"), json.dumps(old, indent=1).encode())
    manifest = manifests.read_manifest(store, "fm")
    assert manifest.recipe == Recipe.from_dict(RECIPE_DICT) and manifest.classes == ["bag", "coat"]
    assert [s.count for s in manifest.shards] == [7, 6] and manifest.val.count == 3
    assert manifest.part_keys() == {*SHARDS[0]["parts"], *SHARDS[1]["parts"], *VAL["parts"]}
    store.delete(manifests.manifest_key("fm"))
    assert manifests.write_manifest(store, manifest) == manifests.manifest_key("fm")
    assert json.loads(store.get(manifests.manifest_key("fm"))) == old   # same names, same values, nothing added
    # The id is computed as before, so runs started on an old dataset resume on it prepared again.
    assert manifests.dataset_id(manifest.classes, manifest.recipe, manifest.shards, manifest.val) == old["id"]


@pytest.mark.parametrize("content, message", [
    (None, r"no prepared dataset 'fm' in .*; prepare it with e.g. `orchestrator prepare --source .* --dataset fm"),
    (b"{not json", r"the manifest of dataset 'fm' \(.*datasets/fm/manifest.json\) is unreadable \(Invalid JSON"),
    (json.dumps({**first_format_manifest(), "shards": []}).encode(), r"unreadable \(shards: .*at least 1 item"),
    (json.dumps({**first_format_manifest(), "recipe": {"size": -1}}).encode(), r"unreadable \(recipe.size: "),
    (json.dumps({**first_format_manifest(), "format": 2}).encode(), r"unreadable \(format: .*orchestrator prepare"),
])
def test_a_missing_or_unreadable_manifest_says_which_dataset_and_what_to_run(tmp_path, content, message):
    store = DirStore(tmp_path)
    if content is not None:
        store.put(manifests.manifest_key("fm"), content)
    with pytest.raises(manifests.ManifestError, match=message):
        manifests.read_manifest(store, "fm")
    with pytest.raises(ValueError, match="invalid dataset name"):
        manifests.read_manifest(store, "../fm")


def test_the_default_part_size_fits_a_pack_and_explicit_ones_are_checked():
    from orchestrator.training.prepare import part_size_for

    assert part_size_for(Recipe(size=32, channels=1), None) == PackRequest.MAX_ITEMS
    big = Recipe(size=224, resize="center_crop", resize_shorter=256)
    assert 100 < part_size_for(big, None) * 224 * 224 * 3 <= 64 * 2 ** 20
    assert part_size_for(big, 1000) == 1000
    with pytest.raises(ValueError, match="--part-size must be 1 to 1783 for 224x224x3 images"):
        part_size_for(big, 2000)
    with pytest.raises(ValueError, match="--part-size must be 1 to 5000"):
        part_size_for(Recipe(size=8), 0)
