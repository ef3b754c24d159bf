"""Packing parts (the train function's "pack" action) and loading them back, with the /tmp cache."""

from __future__ import annotations

import hashlib
import io

import imagefiles as f
import numpy as np
import pytest
from memory_store import MemoryStore
from PIL import Image
from pydantic import ValidationError

from dlpipe.shared.config import ShardCache
from dlpipe.shared.images import ImageError, open_image
from dlpipe.shared.recipe import Recipe
from dlpipe.shared.store import DirStore
from dlpipe.train import parts
from dlpipe.wire import PackRequest, PackResponse


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
    result = parts.pack_part(store, [("src/a/1.png", 0), ("src/a/2.png", 0), ("src/b/3.png", 1),
                                     ("src/b/gone.png", 1)], recipe, "datasets/d/train/shard-000/part-000")
    assert isinstance(result, PackResponse) and result.count == 2
    assert {s.key for s in result.skipped} == {"src/a/2.png", "src/b/gone.png"}
    assert result.key.startswith("datasets/d/train/shard-000/part-000-") and result.key.endswith(".npz")
    assert result.bytes == len(store.get(result.key))
    x, y = parts.load_parts(store, [result.key])
    assert x.shape == (2, 16, 16, 1) and x.dtype == np.uint8 and y.tolist() == [0, 1]
    with Image.open(io.BytesIO(store.get("src/a/1.png"))) as image:
        assert np.array_equal(x[0], recipe.resize_image(image))   # exactly what serving computes
    assert x[0, 0, 0, 0] == 0 and x[0, 8, 8, 0] == 200            # padding, then the image


def test_a_part_of_only_bad_images_is_a_clear_failure_not_an_empty_part(tmp_path):
    store = DirStore(tmp_path)
    store.put("src/a/1.png", b"not an image")
    with pytest.raises(parts.NothingPacked, match=r"none of the 2 images for p/part-000 could be decoded "
                                                  r"\(src/a/1.png: ImageError: .*src/a/gone.png: missing"):
        parts.pack_part(store, [("src/a/1.png", 0), ("src/a/gone.png", 0)], Recipe(size=8), "p/part-000")
    assert list(store.list("p/")) == []


def test_a_decompression_bomb_is_skipped_like_any_undecodable_image(tmp_path):
    store = DirStore(tmp_path)
    store.put("src/a/bomb.png", f.png_bomb(15_000, 15_000))   # 225 megapixels in a few kB
    store.put("src/a/ok.png", png(50))
    result = parts.pack_part(store, [("src/a/bomb.png", 0), ("src/a/ok.png", 0)], Recipe(size=8), "p/part-000")
    assert result.count == 1 and [s.key for s in result.skipped] == ["src/a/bomb.png"]
    assert "decompression bomb" in result.skipped[0].reason


def test_pack_stops_before_the_function_deadline_with_a_way_out(tmp_path):
    store = DirStore(tmp_path)
    store.put("src/a/1.png", png(1))
    with pytest.raises(TimeoutError, match=r"after 0 of 1 images.*smaller --part-size"):
        parts.pack_part(store, [("src/a/1.png", 0)], Recipe(size=8), "p/part-000", remaining_ms=lambda: 1000)
    assert list(store.list("p/")) == []
    assert parts.pack_part(store, [("src/a/1.png", 0)], Recipe(size=8), "p/part-000",
                           remaining_ms=lambda: 600_000).count == 1


# --- one decoder: packed pixels are what serving computes ---------------------------------

def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def tiff16() -> bytes:
    ramp = np.linspace(0, 65535, 48).round().astype(np.uint16)
    return encode(Image.fromarray(np.tile(ramp, (30, 1))), "TIFF")


def float_tiff() -> bytes:
    ramp = np.linspace(0.0, 1.0, 48, dtype=np.float32)
    return encode(Image.fromarray(np.tile(ramp, (30, 1)), "F"), "TIFF")


def big_exif_rotated_jpeg() -> bytes:
    """A 400x300 photo to be turned upright: big enough that JPEG decoding may scale it down."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(f.photo(400, 300), "JPEG", quality=90, exif=exif.tobytes())


DECODABLE = {
    "png16.png": f.png16_gradient,
    "tiff16.tif": tiff16,
    "float.tif": float_tiff,
    "rotated.jpg": f.exif_rotated_jpeg,
    "rotated-big.jpg": big_exif_rotated_jpeg,
    "palette.png": f.palette_png_transparent,
    "alpha.png": f.rgba_png_half_transparent,
    "cmyk.jpg": f.cmyk_jpeg,
}
REFUSED = {
    "icon.ico": lambda: encode(f.photo(32, 32), "ICO"),
    "huge.png": lambda: f.png_bomb(7_000, 6_000),   # 42 megapixels: under Pillow's bomb limit, over ours
}
RECIPES = [Recipe(size=24), Recipe(size=16, channels=1, resize="center_crop", resize_shorter=20),
           Recipe(size=32, channels=3, color_order="BGR", pad=3)]


def serving_pixels(data: bytes, recipe: Recipe) -> np.ndarray:
    """The predict path's preprocessing, as dlpipe.predict does it, before normalisation."""
    from dlpipe.predict.classifier import needed_size

    return recipe.resize_image(open_image(data, min_size=needed_size(recipe)))


@pytest.mark.parametrize("recipe", RECIPES, ids=["rgb-stretch", "grey-crop", "bgr-pad"])
@pytest.mark.parametrize("name", sorted(DECODABLE))
def test_packed_pixels_equal_servings_preprocessing(tmp_path, name, recipe):
    store = DirStore(tmp_path)
    data = DECODABLE[name]()
    store.put(f"src/a/{name}", data)
    result = parts.pack_part(store, [(f"src/a/{name}", 0)], recipe, "p/part-000")
    assert result.count == 1 and not result.skipped
    x, _ = parts.load_parts(store, [result.key])
    assert np.array_equal(x[0], serving_pixels(data, recipe))


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_files_serving_refuses_are_skipped_by_pack(tmp_path, name):
    store = DirStore(tmp_path)
    data = REFUSED[name]()
    store.put(f"src/a/{name}", data)
    store.put("src/a/ok.png", png(9))
    with pytest.raises(ImageError):
        serving_pixels(data, Recipe(size=24))
    result = parts.pack_part(store, [(f"src/a/{name}", 0), ("src/a/ok.png", 0)], Recipe(size=24), "p/part-000")
    assert result.count == 1 and [s.key for s in result.skipped] == [f"src/a/{name}"]
    assert result.skipped[0].reason.startswith("ImageError: ")


def test_the_recipe_decodes_at_the_size_serving_asks_for():
    from dlpipe.predict.classifier import needed_size

    for recipe in [*RECIPES, Recipe(size=224, resize="center_crop", resize_shorter=256),
                   Recipe(size=224, resize="center_crop")]:
        assert recipe.decode_size == needed_size(recipe)


# --- the pack request's bounds -------------------------------------------------------------

def pack_event(**changes) -> dict:
    return {"action": "pack", "items": [["src/a/1.png", 0]], "recipe": {"size": 32},
            "output_prefix": "datasets/d/train/shard-000/part-000", **changes}


def test_a_pack_request_round_trips_with_a_typed_recipe():
    request = PackRequest.model_validate(pack_event(recipe=Recipe(size=32, channels=1, pad=2).to_dict()))
    assert request.recipe == Recipe(size=32, channels=1, pad=2)
    assert PackRequest.model_validate(request.model_dump(mode="json")) == request


@pytest.mark.parametrize("changes, message", [
    ({"items": []}, "give the images to pack: items"),
    ({"items": [], "shards": [{"key": "augmented/shard-000000.tar", "images": 7}]}, "shards need classes"),
    ({"items": [], "shards": [{"key": "../x.tar", "images": 7}], "classes": ["a"]}, "'.' or '..' segment"),
    ({"items": [], "shards": [{"key": "x.tar", "images": 1000}], "classes": ["a"], "recipe": {"size": 1024}},
     "a shard of packed augment output is never split"),
    ({"items": [["src/a/1.png", -1]]}, "label -1 of 'src/a/1.png' is not a class index"),
    ({"items": [["../etc/passwd", 0]]}, "'.' or '..' segment"),
    ({"items": [["/abs/1.png", 0]]}, "absolute"),
    ({"items": [["src/" + "x" * 1100, 0]]}, "S3 takes at most 1024"),
    ({"items": [["src/a/1.png", 0]] * 5001}, "at most 5000 items"),
    ({"output_prefix": ""}, "at least 1 character"),
    ({"output_prefix": "datasets/d/"}, "output_prefix is not a valid store key stem"),
    ({"output_prefix": "datasets/../d"}, "output_prefix is not a valid store key stem"),
    ({"recipe": {"size": 0}}, "recipe.size"),
    ({"recipe": {"size": 32, "colour": "RGB"}}, "recipe.colour"),
    ({"recipe": {"size": 1024}, "items": [["src/a/1.png", 0]] * 100}, "at most 85 images per part"),
    ({"extra": 1}, "extra"),
])
def test_pack_requests_out_of_bounds_are_refused(changes, message):
    with pytest.raises(ValidationError, match=message):
        PackRequest.model_validate(pack_event(**changes))


def test_a_pack_response_never_reports_an_empty_part():
    assert PackResponse.model_validate({"key": "p/part-000-x.npz", "count": 3, "bytes": 10}).action == "pack"
    with pytest.raises(ValidationError, match="count"):
        PackResponse.model_validate({"key": "p/part-000-x.npz", "count": 0, "bytes": 10})


# --- loading, and the /tmp cache ----------------------------------------------------------

def test_load_parts_concatenates_in_order_and_catches_corruption(tmp_path):
    store = DirStore(tmp_path)
    store.put("src/a/1.png", png(1))
    store.put("src/a/2.png", png(2))
    recipe = Recipe(size=8, channels=1)
    first = parts.pack_part(store, [("src/a/2.png", 1)], recipe, "p/part-000").key
    second = parts.pack_part(store, [("src/a/1.png", 0)], recipe, "p/part-001").key
    x, y = parts.load_parts(store, [first, second])
    assert y.tolist() == [1, 0] and x[0, 0, 0, 0] == 2
    store.put(second, store.get(first))  # overwritten with other content
    with pytest.raises(parts.CorruptPart, match="does not match its content hash"):
        parts.load_parts(store, [first, second])
    with pytest.raises(parts.CorruptPart, match="missing"):
        parts.load_parts(store, ["p/part-009-0123456789abcdef.npz"])
    store.put("p/plain.npz", b"junk")
    with pytest.raises(parts.CorruptPart, match="unreadable"):
        parts.load_parts(store, ["p/plain.npz"])
    with pytest.raises(ValueError, match="shard is empty"):
        parts.load_parts(store, [])


def test_warm_workers_read_parts_from_the_tmp_cache_and_evict_the_oldest(tmp_path):
    cache = ShardCache(folder=tmp_path / "cache", limit_bytes=120_000)   # room for two parts
    store = MemoryStore()
    keys = []
    for i in range(3):
        x = np.full((200, 16, 16, 1), i, np.uint8)   # ~51 kB each
        data = parts.arrays_to_npz(x, np.full(200, i, np.int32))
        key = f"p/part-{i:03d}-{hashlib.sha256(data).hexdigest()[:parts.HASH_CHARS]}.npz"
        store.put(key, data)
        keys.append(key)
    parts.load_parts(store, keys[:2], cache)
    assert store.gets == 2
    x, y = parts.load_parts(store, keys[:2], cache)
    assert store.gets == 2 and y[:1].tolist() == [0] and y[-1] == 1      # both from /tmp
    parts.load_parts(store, [keys[2]], cache)                             # evicts the least recently used
    assert store.gets == 3 and len(list((tmp_path / "cache").glob("*.npz"))) == 2
    parts.load_parts(store, [keys[1]], cache)
    assert store.gets == 3                                                # still cached
    parts.load_parts(store, [keys[0]], cache)
    assert store.gets == 4                                                # was evicted
    # A damaged cache file is noticed by the hash and fetched again.
    for path in (tmp_path / "cache").glob("*.npz"):
        path.write_bytes(b"damaged")
    x, _ = parts.load_parts(store, [keys[0]], cache)
    assert store.gets == 5 and x[0, 0, 0, 0] == 0


def test_the_shard_cache_is_configured_from_the_environment(tmp_path, monkeypatch):
    env = {"DLPIPE_SHARD_CACHE": str(tmp_path / "c"), "DLPIPE_SHARD_CACHE_MB": "1.5"}
    assert ShardCache.from_env(env) == ShardCache(tmp_path / "c", int(1.5 * 2 ** 20))
    assert ShardCache.from_env({}).limit_bytes == 384 * 2 ** 20
    for bad in ("lots", "-1", "inf", "nan"):
        with pytest.raises(ValueError, match=f"DLPIPE_SHARD_CACHE_MB must be a number of megabytes >= 0, got '{bad}'"):
            ShardCache.from_env({"DLPIPE_SHARD_CACHE_MB": bad})
    # load_parts without a cache reads the environment (what a warm worker does).
    monkeypatch.setenv("DLPIPE_SHARD_CACHE", str(tmp_path / "env-cache"))
    store = MemoryStore()
    data = parts.arrays_to_npz(np.zeros((1, 2, 2, 1), np.uint8), np.zeros(1, np.int32))
    key = f"p/part-000-{hashlib.sha256(data).hexdigest()[:parts.HASH_CHARS]}.npz"
    store.put(key, data)
    parts.load_parts(store, [key])
    assert len(list((tmp_path / "env-cache").glob("*.npz"))) == 1
