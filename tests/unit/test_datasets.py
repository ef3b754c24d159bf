"""Fashion-MNIST loading, the prepare plan (split/shard/part) and packed parts."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from memory_store import MemoryStore
from PIL import Image

from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import DirStore
from dlpipe.train import datasets

FASHION = Path(datasets.FASHION_MNIST_DIRS[0])


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def test_read_idx_plain_gzipped_and_damaged():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(datasets.read_idx(idx_bytes(images)), images)
    assert np.array_equal(datasets.read_idx(gzip.compress(idx_bytes(images))), images)
    ints = np.array([1, -2, 70000], ">i4")
    assert datasets.read_idx(idx_bytes(ints)).tolist() == [1, -2, 70000]
    with pytest.raises(ValueError, match="truncated"):
        datasets.read_idx(idx_bytes(images)[:-1])
    with pytest.raises(ValueError, match="bad magic"):
        datasets.read_idx(b"PK\x03\x04 not idx")


def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([9, 0, 3, 3, 1], np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    x, y = datasets.load_fashion_mnist("test", directory=tmp_path)
    assert np.array_equal(x, images) and np.array_equal(y, labels)
    pngs = list(datasets.fashion_mnist_pngs("test", limit=2, directory=tmp_path))
    assert [key for key, _ in pngs] == ["test/ankle-boot/00000.png", "test/tshirt-top/00001.png"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(pngs[0][1]))), images[0])
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz is not in"):
        datasets.load_fashion_mnist("train", directory=tmp_path)
    with pytest.raises(ValueError, match="splits 'train'/'test'"):
        datasets.fashion_mnist_file("validation", "images", directory=tmp_path)


def test_the_real_fashion_mnist_files_when_installed():
    if not (FASHION / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"{FASHION} is absent (Debian package dataset-fashion-mnist; .ci/run installs it)")
    x, y = datasets.load_fashion_mnist("test", download=False)
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10


def items_for(classes: dict[str, int], prefix: str = "src") -> list[tuple[str, str]]:
    return [(f"{prefix}/{c}/{i:04d}.png", c) for c, n in classes.items() for i in range(n)]


def test_plan_is_deterministic_balanced_and_stable_under_additions():
    classes = ["cat", "dog", "owl"]
    items = items_for({"cat": 300, "dog": 200, "owl": 100})
    plan = datasets.plan_dataset(items, classes, workers=3, val_fraction=0.2, part_size=70, source_prefix="src")
    again = datasets.plan_dataset(list(reversed(items)), classes, workers=3, val_fraction=0.2, part_size=70,
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
    bigger = datasets.plan_dataset(items + items_for({"cat": 50}, "src/new"), classes, workers=3,
                                   val_fraction=0.2, source_prefix="src")
    old_val = {k for k, _ in val}
    new_val = {k for part in bigger.val_parts for k, _ in part}
    assert old_val <= new_val
    moved = datasets.plan_dataset([("elsewhere/" + k[4:], c) for k, c in items], classes, workers=3,
                                  val_fraction=0.2, part_size=70, source_prefix="elsewhere")
    assert {k[10:] for part in moved.val_parts for k, _ in part} == {k[4:] for k in old_val}


def test_plan_with_a_separate_validation_source_and_bad_inputs():
    classes = ["a", "b"]
    plan = datasets.plan_dataset(items_for({"a": 10, "b": 10}), classes, workers=2, val_fraction=0.5,
                                 val_items=items_for({"a": 3, "b": 3}, "test"))
    assert plan.counts["train"] == 20 and plan.counts["val"] == 6
    with pytest.raises(ValueError, match="validation class folder 'c'"):
        datasets.plan_dataset(items_for({"a": 4}), ["a"], workers=1, val_items=items_for({"c": 1}, "test"))
    with pytest.raises(ValueError, match="cannot be spread over 5 workers"):
        datasets.plan_dataset(items_for({"a": 3}), ["a"], workers=5, val_fraction=0.0)
    with pytest.raises(ValueError, match="val_fraction"):
        datasets.plan_dataset(items_for({"a": 3}), ["a"], workers=1, val_fraction=1.0)


def test_list_class_folders(tmp_path):
    store = DirStore(tmp_path)
    for key in ("src/b/1.png", "src/a/2.JPG", "src/a/deep/3.png", "src/readme.txt", "src/top.png", "src/a/notes.txt"):
        store.put(key, b"x")
    classes, items = datasets.list_class_folders(store, "src/")
    assert classes == ["a", "b"]
    assert sorted(items) == [("src/a/2.JPG", "a"), ("src/a/deep/3.png", "a"), ("src/b/1.png", "b")]
    with pytest.raises(ValueError, match="expected empty/<class>/<image>.png"):
        datasets.list_class_folders(store, "empty")


def png(value: int, size=(20, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, "PNG")
    return buffer.getvalue()


def test_pack_part_uses_the_recipe_and_skips_bad_images(tmp_path):
    store = DirStore(tmp_path)
    store.put("src/a/1.png", png(200))
    store.put("src/a/2.png", b"not an image")
    store.put("src/b/3.png", png(10, (40, 40)))
    recipe = Recipe(size=16, channels=1, pad=2)
    result = datasets.pack_part(store, [("src/a/1.png", 0), ("src/a/2.png", 0), ("src/b/3.png", 1),
                                        ("src/b/gone.png", 1)], recipe, "datasets/d/train/shard-000/part-000")
    assert result["count"] == 2
    assert {s["key"] for s in result["skipped"]} == {"src/a/2.png", "src/b/gone.png"}
    assert result["key"].startswith("datasets/d/train/shard-000/part-000-") and result["key"].endswith(".npz")
    x, y = datasets.load_parts(store, [result["key"]])
    assert x.shape == (2, 16, 16, 1) and x.dtype == np.uint8 and y.tolist() == [0, 1]
    with Image.open(io.BytesIO(store.get("src/a/1.png"))) as image:
        assert np.array_equal(x[0], recipe.resize_image(image))   # exactly what serving computes
    assert x[0, 0, 0, 0] == 0 and x[0, 8, 8, 0] == 200            # padding, then the image


def test_load_parts_concatenates_in_order_and_catches_corruption(tmp_path):
    store = DirStore(tmp_path)
    store.put("src/a/1.png", png(1))
    store.put("src/a/2.png", png(2))
    recipe = Recipe(size=8, channels=1)
    first = datasets.pack_part(store, [("src/a/2.png", 1)], recipe, "p/part-000")["key"]
    second = datasets.pack_part(store, [("src/a/1.png", 0)], recipe, "p/part-001")["key"]
    x, y = datasets.load_parts(store, [first, second])
    assert y.tolist() == [1, 0] and x[0, 0, 0, 0] == 2
    store.put(second, store.get(first))  # overwritten with other content
    with pytest.raises(datasets.CorruptPart, match="does not match its content hash"):
        datasets.load_parts(store, [first, second])
    with pytest.raises(datasets.CorruptPart, match="missing"):
        datasets.load_parts(store, ["p/part-009-0123456789abcdef.npz"])
    store.put("p/plain.npz", b"junk")
    with pytest.raises(datasets.CorruptPart, match="unreadable"):
        datasets.load_parts(store, ["p/plain.npz"])
    with pytest.raises(ValueError, match="shard is empty"):
        datasets.load_parts(store, [])


def test_warm_workers_read_parts_from_the_tmp_cache_and_evict_the_oldest(tmp_path, monkeypatch):
    monkeypatch.setenv("DLPIPE_SHARD_CACHE", str(tmp_path / "cache"))
    store = MemoryStore()
    keys = []
    for i in range(3):
        x = np.full((200, 16, 16, 1), i, np.uint8)   # ~51 kB each
        data = datasets.arrays_to_npz(x, np.full(200, i, np.int32))
        key = f"p/part-{i:03d}-{hashlib.sha256(data).hexdigest()[:datasets.HASH_CHARS]}.npz"
        store.put(key, data)
        keys.append(key)
    monkeypatch.setenv("DLPIPE_SHARD_CACHE_MB", str(120_000 / 2 ** 20))   # room for two parts
    datasets.load_parts(store, keys[:2])
    assert store.gets == 2
    x, y = datasets.load_parts(store, keys[:2])
    assert store.gets == 2 and y[:1].tolist() == [0] and y[-1] == 1      # both from /tmp
    datasets.load_parts(store, [keys[2]])                                 # evicts the least recently used
    assert store.gets == 3 and len(list((tmp_path / "cache").glob("*.npz"))) == 2
    datasets.load_parts(store, [keys[1]])
    assert store.gets == 3                                                # still cached
    datasets.load_parts(store, [keys[0]])
    assert store.gets == 4                                                # was evicted
    # A damaged cache file is noticed by the hash and fetched again.
    for path in (tmp_path / "cache").glob("*.npz"):
        path.write_bytes(b"damaged")
    x, _ = datasets.load_parts(store, [keys[0]])
    assert store.gets == 5 and x[0, 0, 0, 0] == 0
