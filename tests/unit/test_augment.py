"""The augmentation core: variants, naming, seeding, and the batch's handling of bad input."""

from __future__ import annotations

import io
import math
import os
import random
import subprocess
import sys

import imagefiles as f
import numpy as np
import pytest
from memory_store import MemoryStore
from PIL import Image
from pydantic import ValidationError

from dlpipe.augment.batch import augment_batch
from dlpipe.augment.naming import output_names, output_stem, relative_key, variant_seed
from dlpipe.augment.transforms import (
    CROP_MIN_SIDE,
    JPEG_QUALITY,
    ROTATE_DEGREES,
    TRANSFORMS,
    augment_image,
    decode_size,
    encode,
    make_frame,
    sample,
)
from dlpipe.shared.images import ImageError, open_image
from dlpipe.shared.store import DirStore
from dlpipe.wire import DEFAULT_VARIANTS, VARIANTS, AugmentRequest, AugmentSpec


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int32)


def outputs(data: bytes, **spec) -> dict[str, np.ndarray]:
    """Variant tag -> decoded pixels, for a PNG spec (lossless, so pixels compare exactly)."""
    spec.setdefault("format", "png")
    return {suffix[2:].rsplit(".", 1)[0]: decode(out)
            for suffix, out in augment_image(data, "cls/img.png", AugmentSpec(**spec))}


def luma(arr: np.ndarray) -> np.ndarray:
    return arr @ np.array([0.299, 0.587, 0.114])


# --- spec, naming and seeds ------------------------------------------------------------

def test_spec_rejects_unknown_and_repeated_variants_and_bad_sizes():
    with pytest.raises(ValidationError, match="unknown variant"):
        AugmentSpec(variants=["flip", "sepia"])
    with pytest.raises(ValidationError, match="listed twice"):
        AugmentSpec(variants=["flip", "flip"])
    with pytest.raises(ValidationError):
        AugmentSpec(variants=[])
    with pytest.raises(ValidationError):
        AugmentSpec(size=2)
    with pytest.raises(ValidationError):
        AugmentSpec(format="gif")


def test_request_needs_keys_and_cleans_prefixes():
    with pytest.raises(ValidationError):
        AugmentRequest(keys=[], source_prefix="raw", output_prefix="augmented")
    with pytest.raises(ValidationError):
        AugmentRequest(keys=["a.jpg"], source_prefix="../etc", output_prefix="augmented")
    req = AugmentRequest(keys=["raw/a/x.jpg"], source_prefix="raw/", output_prefix="augmented/out/")
    assert (req.source_prefix, req.output_prefix) == ("raw", "augmented/out")


@pytest.mark.parametrize("prefix, problem", [
    ("/tmp/evil", "'/tmp/evil' is absolute"),
    ("/", "'/' is absolute"),
    ("../evil", "'..' segment"),
    ("augmented/../../evil", "'..' segment"),
    ("augmented//x", "empty"),
])
def test_request_refuses_prefixes_outside_the_store_instead_of_rewriting_them(prefix, problem):
    for field in ("source_prefix", "output_prefix"):
        with pytest.raises(ValidationError, match=problem) as caught:
            AugmentRequest(**{"keys": ["raw/a/x.jpg"], "source_prefix": "raw", "output_prefix": "augmented",
                              field: prefix})
        assert caught.value.errors()[0]["loc"] == (field,)


def test_request_and_spec_refuse_unknown_fields():
    with pytest.raises(ValidationError, match="sise") as caught:
        AugmentSpec(sise=64)                                 # would silently give full-size outputs
    assert caught.value.errors()[0]["type"] == "extra_forbidden"
    with pytest.raises(ValidationError, match="output"):
        AugmentRequest(keys=["raw/a/x.jpg"], source_prefix="raw", output_prefix="augmented", output="elsewhere")


def test_layout_keeps_the_class_folder():
    assert relative_key("raw/cat/x.jpg", "raw") == "cat/x.jpg"
    assert relative_key("cat/x.jpg", "") == "cat/x.jpg"
    with pytest.raises(ImageError, match="not under the source prefix"):
        relative_key("rawer/cat/x.jpg", "raw")
    assert output_stem("cat/x.jpg") == "cat/x"
    assert output_stem("cat/x.tar.gz") == "cat/x.tar"
    assert output_stem("cat/noext") == "cat/noext"
    assert output_stem("x.png") == "x"


def test_output_names_follow_variants_and_copies():
    spec = AugmentSpec(variants=["original", "flip", "rotate"], copies=2, format="png")
    assert [s for _, _, s in output_names(spec)] == [
        "__original.png", "__flip.png", "__rotate-0.png", "__rotate-1.png"]
    assert [s for _, _, s in output_names(AugmentSpec(variants=["crop"]))] == ["__crop.jpg"]


def test_variant_seed_is_stable_across_processes():
    here = [variant_seed(7, "cat/x.jpg", "rotate", 0), variant_seed(7, "cat/x.jpg", "rotate", 1)]
    assert here[0] != here[1]
    assert variant_seed(8, "cat/x.jpg", "rotate", 0) != here[0]
    assert variant_seed(7, "cat/y.jpg", "rotate", 0) != here[0]
    code = ("from dlpipe.augment.naming import variant_seed;"
            "print(variant_seed(7, 'cat/x.jpg', 'rotate', 0), variant_seed(7, 'cat/x.jpg', 'rotate', 1))")
    for hash_seed in ("1", "2"):  # hash() would differ between these processes
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": hash_seed}).stdout.split()
        assert [int(v) for v in out] == here


# --- the transforms --------------------------------------------------------------------

def test_every_output_has_the_requested_size_and_format():
    data = f.jpeg(90, 60)
    for spec, expected in ((AugmentSpec(size=32), (32, 32)), (AugmentSpec(), (90, 60))):
        outs = augment_image(data, "cls/img.jpg", spec)
        assert [s for s, _ in outs] == [f"__{v}.jpg" for v in DEFAULT_VARIANTS]
        for _, out in outs:
            image = Image.open(io.BytesIO(out))
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", expected)
    for _, out in augment_image(data, "cls/img.jpg", AugmentSpec(variants=list(VARIANTS), format="png")):
        assert Image.open(io.BytesIO(out)).format == "PNG"


def test_jpeg_encoding_writes_what_pillow_save_writes():
    # encode() bypasses save()'s option handling; the bytes must not change with it.
    for image in (f.photo(224, 224), f.photo(33, 17, seed=4), f.photo(40, 40).convert("L")):
        assert encode(image, "jpeg") == f.encode(image, "JPEG", quality=JPEG_QUALITY)


def test_outputs_are_byte_identical_on_rerun_and_depend_on_the_seed():
    data = f.jpeg(80, 64, seed=3)
    spec = AugmentSpec(variants=list(VARIANTS), size=48, copies=2)
    first = augment_image(data, "cls/img.jpg", spec)
    assert first == augment_image(data, "cls/img.jpg", spec)
    other = dict(augment_image(data, "cls/img.jpg", spec.model_copy(update={"seed": 1})))
    first = dict(first)
    for suffix in first:
        same = first[suffix] == other[suffix]
        assert same == suffix.startswith(("__original", "__flip")), suffix
    assert first["__rotate-0.jpg"] != first["__rotate-1.jpg"]


def test_original_is_the_centre_square_and_flip_mirrors_it():
    image = f.photo(60, 40)
    outs = outputs(f.encode(image, "PNG"), size=40, variants=["original", "flip"])
    centre = np.asarray(image)[:, 10:50].astype(np.int32)
    assert np.array_equal(outs["original"], centre)
    assert np.array_equal(outs["flip"], outs["original"][:, ::-1])


def test_rotate_leaves_no_empty_corners():
    grey = f.encode(Image.new("RGB", (120, 90), (180, 180, 180)), "PNG")
    for size, shape in ((None, (90, 120)), (40, (40, 40)), (90, (90, 90)), (200, (200, 200))):
        for seed in range(6):  # shrinking by 2.25 (reduced first), 1 (no resize), enlarging
            rotated = outputs(grey, variants=["rotate"], seed=seed, size=size)["rotate"]
            assert rotated.shape == (*shape, 3)
            assert rotated.min() >= 175, f"size {size}, seed {seed}: a corner was filled, not covered"
    photo = f.encode(f.photo(48, 48), "PNG")
    outs = outputs(photo, variants=["original", "rotate"])
    assert np.abs(outs["rotate"] - outs["original"]).mean() > 3


@pytest.mark.parametrize("source, size", [((512, 512), 224), ((700, 466), 150), ((1000, 1000), 100),
                                          ((100, 100), 224), ((90, 60), None)])
def test_supersampled_resampling_is_close_to_a_careful_resize(source, size):
    # `sample` (what crop and rotate use), unrotated, against Lanczos on the same region.
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize(source, Image.Resampling.LANCZOS)
    frame = make_frame(image, size)
    reference = np.asarray(image.resize(frame.out, Image.Resampling.LANCZOS, box=frame.box), float)
    mse = np.mean((np.asarray(sample(frame, frame.centre, frame.scale), float) - reference) ** 2)
    assert mse == 0 or 10 * math.log10(255 ** 2 / mse) > 30     # dB; Pillow's bilinear resize: 33-36


@pytest.mark.parametrize("source, size", [(512, None), (512, 224), (512, 100), (400, 64), (100, 224)])
def test_rotate_matches_a_careful_reference(source, size):
    # Reference: bicubic rotation at 4x the output resolution, then Lanczos down.
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize((source, source), Image.Resampling.LANCZOS)
    frame = make_frame(image, size)
    angle = math.radians(random.Random(3).uniform(-ROTATE_DEGREES, ROTATE_DEGREES))
    (ow, oh), (left, top, right, bottom) = frame.out, frame.box
    zoom = abs(math.cos(angle)) + abs(math.sin(angle))
    step = (right - left) / (4 * ow) / zoom
    a, b = math.cos(angle) * step, math.sin(angle) * step
    cx, cy, ox, oy = (left + right) / 2, (top + bottom) / 2, 2 * ow, 2 * oh
    reference = image.transform((4 * ow, 4 * oh), Image.Transform.AFFINE,
                                (a, b, cx - a * ox - b * oy, -b, a, cy + b * ox - a * oy),
                                resample=Image.Resampling.BICUBIC).resize((ow, oh), Image.Resampling.LANCZOS)
    rotated = TRANSFORMS["rotate"](frame, random.Random(3))
    mse = np.mean((np.asarray(rotated, float) - np.asarray(reference, float)) ** 2)
    assert 10 * math.log10(255 ** 2 / mse) > 28     # dB; the unrotated image scores about 10


def test_enlarging_to_the_frame_edge_never_fails():
    # (side, size) pairs where side/2 - (side/size) * size/2 rounds to a hair below 0: the
    # resampling box must be clamped, or Pillow refuses it ("box offset can't be negative").
    for side, size in ((14, 100), (55, 100), (21, 150), (84, 150)):
        data = f.encode(f.photo(side, side + 3), "PNG")
        outs = outputs(data, variants=list(VARIANTS), size=size)
        assert all(out.shape == (size, size, 3) for out in outs.values())


def test_crop_zooms_into_part_of_the_frame():
    ramp = np.tile(np.linspace(0, 255, 100).astype(np.uint8), (100, 1))
    data = f.encode(Image.fromarray(np.stack([ramp] * 3, -1)), "PNG")
    for seed in range(5):
        crop = outputs(data, variants=["crop"], seed=seed, size=50)["crop"][:, :, 0]
        assert crop.shape == (50, 50)
        span = crop[25, -1] - crop[25, 0]
        assert 0.55 * 255 < span < 0.95 * 255     # a 65-90 % wide slice of the ramp, stretched


def test_blur_removes_detail():
    noisy = f.encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)), "PNG")
    outs = outputs(noisy, variants=["original", "blur"])
    def detail(a):
        return np.abs(np.diff(a, axis=1)).mean()

    assert detail(outs["blur"]) < 0.6 * detail(outs["original"])


def test_colour_changes_keep_the_picture():
    outs = outputs(f.encode(f.photo(48, 48, seed=1), "PNG"), variants=["original", "color", "contrast", "brightness"],
                   seed=2)
    orig = outs["original"]
    def chroma(a):
        return np.abs(a - a.mean(axis=2, keepdims=True)).mean()

    assert abs(chroma(outs["color"]) - chroma(orig)) > 1           # saturation moved...
    assert abs(luma(outs["color"]).mean() - luma(orig).mean()) < 3  # ...brightness did not
    assert abs(luma(outs["contrast"]).std() - luma(orig).std()) > 1
    assert abs(luma(outs["contrast"]).mean() - luma(orig).mean()) < 4
    ratio = luma(outs["brightness"]).mean() / luma(orig).mean()
    assert 0.68 < ratio < 1.32 and abs(ratio - 1) > 0.005
    for name in ("color", "contrast", "brightness"):
        assert np.corrcoef(luma(outs[name]).ravel(), luma(orig).ravel())[0, 1] > 0.9


def test_reduced_jpeg_decoding_still_fills_the_output():
    # An 800x600 photo to 64 px: decoded at 1/8 scale, 100x75 would do for most variants,
    # but crop needs 64/0.56 = 114 px, so 1/4 scale. The result must match full decoding.
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((800, 600), Image.Resampling.LANCZOS)
    jpeg = f.encode(photo, "JPEG", quality=95)
    fast = decode(dict(augment_image(jpeg, "cls/img.jpg", AugmentSpec(size=64, format="png")))["__original.png"])
    full = Image.open(io.BytesIO(jpeg)).convert("RGB")
    reference = np.asarray(full.resize((64, 64), Image.Resampling.LANCZOS, box=(100, 0, 700, 600)), float)
    assert 10 * math.log10(255 ** 2 / np.mean((fast - reference) ** 2)) > 30   # dB


def test_reduced_decoding_never_makes_a_variant_upsample():
    data = f.jpeg(800, 600, seed=5)
    for size in (16, 40, 45, 64, 100, 200):
        for variants in (["crop"], ["original", "rotate"]):
            spec = AugmentSpec(size=size, variants=variants)
            decoded = min(open_image(data, min_size=decode_size(spec)).size)
            smallest_region = CROP_MIN_SIDE * decoded if "crop" in variants else decoded
            assert smallest_region >= size or decoded == 600, (size, variants, decoded)


# --- the batch -------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    s = DirStore(tmp_path / "data")
    s.put("raw/cat/good1.jpg", f.jpeg(64, 48, seed=1))
    s.put("raw/cat/good2.png", f.encode(f.photo(50, 50, seed=2), "PNG"))
    for name, make in {**f.BAD_FILES, **f.GOOD_ODD_FILES}.items():
        s.put(f"raw/odd/{name}", make())
    return s


def run(store, keys, **spec):
    request = AugmentRequest(keys=keys, source_prefix="raw", output_prefix="augmented", spec=AugmentSpec(**spec))
    return augment_batch(request, store)


def test_batch_reports_bad_images_by_name_and_converts_the_rest(store):
    keys = sorted(store.list("raw/"))
    response = run(store, keys + ["raw/cat/missing.jpg", "elsewhere/x.jpg"], size=32, variants=["original", "flip"])
    by_key = {r.key: r for r in response.results}
    assert [r.key for r in response.results] == keys + ["raw/cat/missing.jpg", "elsewhere/x.jpg"]
    reasons = {k.rsplit("/", 1)[1]: r.error for k, r in by_key.items() if r.error}
    assert set(reasons) == {"empty.jpg", "truncated.jpg", "text.jpg", "bomb.png", "missing.jpg", "x.jpg"}
    assert "empty" in reasons["empty.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "not a recognised image" in reasons["text.jpg"]
    assert "decompression bomb" in reasons["bomb.png"]
    assert "not found" in reasons["missing.jpg"]
    assert "not under the source prefix" in reasons["x.jpg"]
    good = [r for r in response.results if not r.error]
    assert len(good) == 2 + len(f.GOOD_ODD_FILES)
    assert response.failed == 6 and response.images_in == len(keys) + 2
    assert response.images_out == 2 * len(good)
    for result in good:
        for key in result.outputs:
            assert store.exists(key)
    assert by_key["raw/cat/good1.jpg"].outputs == ["augmented/cat/good1__original.jpg", "augmented/cat/good1__flip.jpg"]
    assert by_key["raw/odd/rotated.jpg"].outputs[0] == "augmented/odd/rotated__original.jpg"
    assert sorted(store.list("augmented/")) == sorted(k for r in good for k in r.outputs)
    assert response.bytes_out == sum(len(store.get(k)) for k in store.list("augmented/"))


def test_odd_but_valid_images_come_out_upright_and_white_backed(store):
    run(store, ["raw/odd/rotated.jpg", "raw/odd/palette.png"], variants=["original"], format="png")
    rotated = decode(store.get("augmented/odd/rotated__original.png"))
    assert rotated.shape == (60, 40, 3)
    assert rotated[5, 20, 0] > 200 and rotated[55, 20, 2] > 200    # red on top, blue below
    palette = decode(store.get("augmented/odd/palette__original.png"))
    assert tuple(palette[5, 5]) == (255, 255, 255)


def test_rerun_and_rebatching_give_identical_bytes(store, tmp_path):
    keys = sorted(store.list("raw/"))
    run(store, keys, size=24, seed=3)
    first = {k: store.get(k) for k in store.list("augmented/")}
    assert first
    other = DirStore(tmp_path / "other")
    for key in keys:
        other.put(key, store.get(key))
    for i in range(0, len(keys), 3):  # other batches, reverse order
        run(other, keys[i:i + 3][::-1], size=24, seed=3)
    assert {k: other.get(k) for k in other.list("augmented/")} == first


def test_a_failing_write_costs_only_that_image(store):
    class FailingStore(DirStore):
        def put(self, key, data):
            if "good2" in key:
                raise OSError("disk full")
            super().put(key, data)

    flaky = FailingStore(store.root)
    response = run(flaky, ["raw/cat/good1.jpg", "raw/cat/good2.png", "raw/odd/grey.jpg"], variants=["original"])
    errors = {r.key: r.error for r in response.results}
    assert errors["raw/cat/good2.png"] == "OSError: disk full"
    assert errors["raw/cat/good1.jpg"] is None and errors["raw/odd/grey.jpg"] is None
    assert store.exists("augmented/cat/good1__original.jpg") and store.exists("augmented/odd/grey__original.jpg")


def test_stops_before_the_time_limit_and_says_which_keys_were_left(store):
    keys = ["raw/cat/good1.jpg", "raw/cat/good2.png", "raw/odd/grey.jpg"]
    budget = iter([60_000, 60_000, 4_000, 4_000])  # the first call sets the reserve: 5 s
    request = AugmentRequest(keys=keys, source_prefix="raw", output_prefix="augmented")
    response = augment_batch(request, store, time_left_ms=lambda: next(budget))
    assert response.results[0].error is None and response.results[0].outputs
    for result in response.results[1:]:
        assert "not processed" in result.error and not result.outputs
    assert response.failed == 2
    assert not store.exists("augmented/cat/good2__original.jpg")


def test_a_short_time_limit_still_gets_work_done(store):
    request = AugmentRequest(keys=["raw/cat/good1.jpg", "raw/odd/grey.jpg"], source_prefix="raw",
                             output_prefix="augmented")
    response = augment_batch(request, store, time_left_ms=lambda: 1500)  # e.g. a 2 s function
    assert response.failed == 0 and response.images_out == 2 * len(DEFAULT_VARIANTS)


def test_remote_stores_are_read_and_written_on_threads_with_the_same_results(store):
    keys = sorted(store.list("raw/")) + ["raw/cat/missing.jpg"]
    remote = MemoryStore(fail_on="good2__flip")
    for key in keys[:-1]:
        remote.objects[key] = store.get(key)
    request = AugmentRequest(keys=keys, source_prefix="raw", output_prefix="augmented", spec=AugmentSpec(size=24))
    here, there = augment_batch(request, store), augment_batch(request, remote)
    assert all(name.startswith("store") for name in remote.threads)
    errors = {r.key: r.error for r in there.results if r.error}
    assert errors.pop("raw/cat/good2.png") == "refused augmented/cat/good2__flip.jpg"
    assert errors == {r.key: r.error for r in here.results if r.error}
    good2 = next(r for r in there.results if r.key == "raw/cat/good2.png")
    assert "augmented/cat/good2__flip.jpg" not in good2.outputs and len(good2.outputs) == len(DEFAULT_VARIANTS) - 1
    for result in there.results:
        for key in result.outputs:
            assert remote.get(key) == store.get(key)
    assert there.images_out == here.images_out - 1
