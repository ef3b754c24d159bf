"""The pack action over packed augment output: each tar shard read with one GET, its members decoded."""

from __future__ import annotations

import imagefiles as f
import numpy as np
import pytest

from dlpipe.shared.counted import counted, counting
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.shards import ShardWriter
from dlpipe.shared.store import DirStore
from dlpipe.train import parts
from dlpipe.wire import ShardRef

RECIPE = Recipe(size=16, channels=3)
CLASSES = ["cat", "dog"]


def shard(members: dict[str, bytes]) -> bytes:
    writer = ShardWriter()
    for name, data in members.items():
        writer.add(name, data)
    return writer.finish()


@pytest.fixture
def store(tmp_path):
    s = DirStore(tmp_path)
    s.put("augmented/shard-000000.tar", shard({
        "cat/a.original.jpg": f.jpeg(30, 20, seed=1), "cat/a.flip.jpg": f.jpeg(30, 20, seed=2),
        "dog/b.original.jpg": f.jpeg(20, 30, seed=3), "dog/b.flip.jpg": f.truncated_jpeg(),
        "cat/a.notes.txt": b"not an image: not packed"}))
    s.put("augmented/shard-000001.tar", shard({"cow/c.original.jpg": f.jpeg(20, 20, seed=4),
                                               "dog/d.original.jpg": f.jpeg(24, 24, seed=5)}))
    return s


def test_shards_pack_the_pixels_files_would_with_one_get_each(store):
    refs = [ShardRef(key="augmented/shard-000000.tar", images=4), ShardRef(key="augmented/shard-000001.tar", images=2)]
    with counting() as made:
        response = parts.pack_part(counted(store), [], RECIPE, "datasets/d/train/part-000", shards=refs,
                                   classes=CLASSES)
    assert made["get"] == 2 and made["put"] == 1
    x, y = parts.npz_to_arrays(store.get(response.key))
    assert y.tolist() == [0, 0, 1, 1] and response.count == 4
    for i, seed, size in ((0, 1, (30, 20)), (1, 2, (30, 20)), (2, 3, (20, 30)), (3, 5, (24, 24))):
        np.testing.assert_array_equal(x[i], RECIPE.decode(f.jpeg(*size, seed=seed)))   # as from a file
    reasons = {s.key: s.reason for s in response.skipped}
    assert set(reasons) == {"augmented/shard-000000.tar:dog/b.flip.jpg",
                            "augmented/shard-000001.tar:cow/c.original.jpg"}
    assert reasons["augmented/shard-000000.tar:dog/b.flip.jpg"].startswith("ImageError: ")
    assert "'cow' is not one of the dataset's classes" in reasons["augmented/shard-000001.tar:cow/c.original.jpg"]


def test_a_missing_or_broken_shard_is_named_and_the_rest_packed(store):
    store.put("augmented/shard-000002.tar", b"garbage" * 300)
    refs = [ShardRef(key="augmented/gone.tar", images=3), ShardRef(key="augmented/shard-000002.tar", images=3),
            ShardRef(key="augmented/shard-000001.tar", images=2)]
    response = parts.pack_part(store, [("augmented/x.jpg", 0)], RECIPE, "datasets/d/val/part-000", shards=refs,
                               classes=CLASSES)
    reasons = {s.key: s.reason for s in response.skipped}
    assert reasons["augmented/gone.tar"].startswith("missing: ")
    assert reasons["augmented/shard-000002.tar"].startswith("BadShard: not a readable tar shard")
    assert reasons["augmented/x.jpg"].startswith("missing: ")
    assert response.count == 1


def test_a_shard_holding_more_than_its_index_says_fails_clearly(store):
    with pytest.raises(ValueError, match="hold more images than their index says"):
        parts.pack_part(store, [], RECIPE, "datasets/d/val/part-000",
                        shards=[ShardRef(key="augmented/shard-000000.tar", images=2)], classes=CLASSES)
