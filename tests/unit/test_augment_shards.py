"""Packed augment output: a batch's outputs as tar shards in WebDataset's layout."""

from __future__ import annotations

import io
import re
import tarfile

import imagefiles as f
import pytest

from dlpipe.augment import batch
from dlpipe.augment.batch import augment_batch
from dlpipe.shared.shards import BadShard, ShardWriter, read_members, sample_key
from dlpipe.shared.store import DirStore
from dlpipe.wire import AugmentRequest, AugmentSpec

# WebDataset's own rule (webdataset.tariterators.base_plus_ext): the sample key is the path up to the
# first '.' of the file name, the field is the rest.
WEBDATASET_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def webdataset_samples(data: bytes) -> list[tuple[str, list[str]]]:
    """(key, fields) of each sample, grouped as WebDataset groups consecutive members."""
    samples: list[tuple[str, list[str]]] = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            key, field = WEBDATASET_KEY.match(member.name).groups()
            if samples and samples[-1][0] == key:
                samples[-1][1].append(field)
            else:
                samples.append((key, [field]))
    return samples


@pytest.fixture
def store(tmp_path):
    s = DirStore(tmp_path / "data")
    s.put("raw/cat/a.jpg", f.jpeg(64, 48, seed=1))
    s.put("raw/cat/IMG.2.png", f.encode(f.photo(50, 50, seed=2), "PNG"))
    s.put("raw/dog/b.jpg", f.jpeg(48, 64, seed=3))
    s.put("raw/dog/broken.jpg", f.truncated_jpeg())
    return s


def run(store, keys, shard="shard-000000", **spec):
    spec = {"size": 32, "variants": ["original", "flip", "rotate"], **spec}
    return augment_batch(AugmentRequest(keys=keys, source_prefix="raw", output_prefix="augmented", shard=shard,
                                        spec=AugmentSpec(**spec)), store)


KEYS = ["raw/cat/IMG.2.png", "raw/cat/a.jpg", "raw/dog/b.jpg"]


def test_a_batch_is_one_shard_in_webdataset_layout_holding_the_per_image_bytes(store, tmp_path):
    response = run(store, KEYS)
    assert sorted(store.list("augmented/")) == ["augmented/shard-000000.tar"]
    data = store.get("augmented/shard-000000.tar")
    assert webdataset_samples(data) == [(key, ["original.jpg", "flip.jpg", "rotate.jpg"])
                                        for key in ("cat/IMG%2E2", "cat/a", "dog/b")]
    [shard] = response.shards
    assert (shard.key, shard.bytes, shard.samples, shard.images) == ("augmented/shard-000000.tar", len(data), 3, 9)
    assert shard.classes == {"cat": 6, "dog": 3}
    assert response.images_out == 9 and response.bytes_out == len(data)
    assert response.results[0].shard == shard.key
    assert response.results[0].outputs == ["cat/IMG%2E2.original.jpg", "cat/IMG%2E2.flip.jpg", "cat/IMG%2E2.rotate.jpg"]
    # The very bytes the per-image layout writes.
    files = DirStore(tmp_path / "files")
    for key in KEYS:
        files.put(key, store.get(key))
    augment_batch(AugmentRequest(keys=KEYS, source_prefix="raw", output_prefix="augmented",
                                 spec=AugmentSpec(size=32, variants=["original", "flip", "rotate"])), files)
    members = dict(read_members(data))
    assert members["cat/a.rotate.jpg"] == files.get("augmented/cat/a__rotate.jpg")
    assert members["cat/IMG%2E2.flip.jpg"] == files.get("augmented/cat/IMG.2__flip.jpg")
    assert len(members) == len(list(files.list("augmented/")))


def test_members_have_fixed_metadata_and_a_rerun_rewrites_identical_bytes(store):
    run(store, KEYS)
    first = store.get("augmented/shard-000000.tar")
    run(store, KEYS)
    assert store.get("augmented/shard-000000.tar") == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.type) for m in tar} == {
            (0, 0, 0, "", "", 0o644, tarfile.REGTYPE)}


def test_a_bad_image_in_a_packed_batch_is_named_and_the_rest_is_packed(store):
    response = run(store, ["raw/cat/a.jpg", "raw/dog/broken.jpg", "raw/dog/b.jpg", "raw/dog/missing.jpg"])
    errors = {r.key: r.error for r in response.results if r.error}
    assert set(errors) == {"raw/dog/broken.jpg", "raw/dog/missing.jpg"}
    assert "truncated" in errors["raw/dog/broken.jpg"] and "not found" in errors["raw/dog/missing.jpg"]
    assert response.failed == 2
    samples = webdataset_samples(store.get("augmented/shard-000000.tar"))
    assert [key for key, _ in samples] == ["cat/a", "dog/b"]
    assert response.shards[0].samples == 2


def test_a_large_batch_rolls_over_into_more_shards(store, monkeypatch):
    monkeypatch.setattr(batch, "SHARD_MAX_BYTES", 1)   # every sample fills a shard
    response = run(store, KEYS, shard="s")
    assert [s.key for s in response.shards] == ["augmented/s.tar", "augmented/s-1.tar", "augmented/s-2.tar"]
    assert [r.shard for r in response.results] == [s.key for s in response.shards]
    assert [webdataset_samples(store.get(s.key))[0][0] for s in response.shards] == ["cat/IMG%2E2", "cat/a", "dog/b"]


def test_a_failing_shard_write_fails_its_images_only(store):
    class FailingStore(DirStore):
        def put(self, key, data):
            if key.endswith(".tar"):
                raise OSError("disk full")
            super().put(key, data)

    response = run(FailingStore(store.root), ["raw/cat/a.jpg", "raw/dog/broken.jpg"])
    assert [r.error for r in response.results] == ["OSError: disk full", response.results[1].error]
    assert "truncated" in response.results[1].error
    assert response.shards == [] and response.images_out == 0


def test_sample_keys_escape_dots_reversibly_and_reading_a_non_tar_fails_clearly():
    assert sample_key("cat/IMG.1") == "cat/IMG%2E1"
    assert sample_key("a%2Eb") == "a%252Eb" != sample_key("a.b")
    assert sample_key("x.y/z") == "x.y/z"   # folders may hold dots: WebDataset cuts the file name only
    writer = ShardWriter()
    writer.add("cat/x.jpg", b"abc")
    assert list(read_members(writer.finish())) == [("cat/x.jpg", b"abc")]
    with pytest.raises(BadShard, match="not a readable tar shard"):
        list(read_members(b"this is not a tar file" * 40))


@pytest.mark.parametrize("shard", ["", "a/b", "../x", "x" * 65, "a.tar"])
def test_shard_names_are_plain(shard):
    with pytest.raises(ValueError, match="shard"):
        AugmentRequest(keys=["raw/a.jpg"], source_prefix="raw", output_prefix="augmented", shard=shard)
