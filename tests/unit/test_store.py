"""Both store implementations must behave the same: run every test against each."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from moto import mock_aws

from dlpipe.shared.s3_store import S3Store
from dlpipe.shared.store import (
    DirStore,
    InvalidKey,
    KeyNotFound,
    StoreError,
    join_key,
    open_store,
    validate_key,
)


@pytest.fixture(params=["dir", "s3", "s3-prefixed"])
def store(request, tmp_path, monkeypatch):
    if request.param == "dir":
        yield DirStore(tmp_path / "store")
        return
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="bucket")
        yield open_store("s3://bucket/some/prefix" if request.param == "s3-prefixed" else "s3://bucket")


def test_put_get_roundtrip(store):
    store.put("cat/1.jpg", b"\xff\xd8 data")
    assert store.get("cat/1.jpg") == b"\xff\xd8 data"
    assert store.exists("cat/1.jpg")
    store.put("cat/1.jpg", b"new")
    assert store.get("cat/1.jpg") == b"new"


def test_missing_key_raises_key_not_found(store):
    with pytest.raises(KeyNotFound) as err:
        store.get("nope/missing.jpg")
    assert "nope/missing.jpg" in str(err.value)
    assert not store.exists("nope/missing.jpg")


def test_list_is_sorted_filtered_and_paginates(store):
    keys = [f"raw/c{i % 3}/img{i:04d}.png" for i in range(1005)]  # > 1000: S3 pages at 1000
    for key in keys:
        store.put(key, b"x")
    store.put("rawish/other.png", b"x")
    store.put("top.txt", b"x")
    assert list(store.list("raw/")) == sorted(keys)
    assert list(store.list("raw/c1/")) == sorted(k for k in keys if k.startswith("raw/c1/"))
    assert list(store.list("raw")) == sorted(keys + ["rawish/other.png"])
    assert list(store.list("absent/")) == []
    assert len(list(store.list())) == 1007


def test_delete_is_idempotent(store):
    store.put("a/b", b"1")
    store.delete("a/b")
    store.delete("a/b")
    assert not store.exists("a/b")


def test_files_roundtrip(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"0123456789" * 1000)
    store.upload_file(src, "files/blob.bin")
    assert store.get("files/blob.bin") == src.read_bytes()


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../escape", "a/../../b", "a//b", "a/./b", "a\\b", "a/\x00"])
def test_unsafe_keys_are_rejected_by_every_operation(store, key):
    for op in (lambda: store.get(key), lambda: store.put(key, b"x"), lambda: store.exists(key),
               lambda: store.delete(key)):
        with pytest.raises(InvalidKey):
            op()


def test_dir_store_cannot_be_escaped_through_a_symlink(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    store = DirStore(root)
    with pytest.raises(InvalidKey):
        store.put("link/secret", b"x")
    assert not (tmp_path / "outside" / "secret").exists()


def test_dir_store_refuses_a_file_symlink_that_leads_out_even_in_a_known_folder(tmp_path):
    root = tmp_path / "root"
    (tmp_path / "secret.txt").write_bytes(b"not yours")
    store = DirStore(root)
    store.put("cat/1.jpg", b"x")  # the folder is now known to lie inside the root
    (root / "cat" / "2.jpg").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(InvalidKey):
        store.get("cat/2.jpg")
    (root / "cat" / "3.jpg").symlink_to(root / "cat" / "1.jpg")  # none is followed, even one that stays inside
    with pytest.raises(InvalidKey, match="symbolic link"):
        store.get("cat/3.jpg")


def test_dir_store_folder_created_by_another_writer_or_removed_meanwhile(tmp_path):
    a, b = DirStore(tmp_path), DirStore(tmp_path)
    a.put("dog/1.jpg", b"1")
    b.put("dog/2.jpg", b"2")
    shutil.rmtree(tmp_path / "dog")  # a remembers dog/ as a folder inside the root
    a.put("dog/3.jpg", b"3")
    assert list(a.list("dog/")) == ["dog/3.jpg"] and b.get("dog/3.jpg") == b"3"


def test_dir_store_concurrent_writers_into_a_new_folder(tmp_path):
    store = DirStore(tmp_path)
    keys = [f"new/{i:03d}.bin" for i in range(64)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, k.encode() * 100), keys))
    assert list(store.list("new/")) == keys
    assert all(store.get(k) == k.encode() * 100 for k in keys)


def test_dir_store_writes_are_atomic_and_leave_no_temporaries(tmp_path):
    store = DirStore(tmp_path)
    store.put("x/y.bin", b"1" * 100)
    store.put("x/y.bin", b"2" * 100)
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["y.bin"]
    assert list(store.list()) == ["x/y.bin"]


def test_open_store_by_url(tmp_path):
    assert isinstance(open_store(str(tmp_path)), DirStore)
    assert isinstance(open_store(f"file://{tmp_path}"), DirStore)
    s3 = open_store("s3://bucket/a/b/")
    assert isinstance(s3, S3Store) and s3.bucket == "bucket" and s3.prefix == "a/b"
    with pytest.raises(StoreError, match="scheme"):
        open_store("gs://bucket")
    with pytest.raises(StoreError):
        open_store("s3:///nobucket")


def test_join_and_validate_key():
    assert join_key("runs/", "r1", "/weights.npz") == "runs/r1/weights.npz"
    assert validate_key("a/b.c") == "a/b.c"
    with pytest.raises(InvalidKey):
        join_key("runs", "..", "x")


def test_s3_store_pickles_without_its_client(monkeypatch):
    import pickle

    store = S3Store("bucket", "p")
    store._client = object()  # stands for a live boto3 client, which cannot be pickled
    clone = pickle.loads(pickle.dumps(store))
    assert clone._client is None and clone.url == "s3://bucket/p"


@pytest.mark.parametrize("key", ["a" * 1025, "é" * 513, "d/" + "x" * 1023, ".tmp-1", "a/.tmp-x/b", "caf\udce9"])
def test_keys_s3_refuses_or_that_name_a_temporary_are_refused_by_every_store(store, key):
    with pytest.raises(InvalidKey) as err:
        store.put(key, b"x")
    assert repr(key)[1:20] in str(err.value)
    with pytest.raises(InvalidKey):
        store.get(key)
    with pytest.raises(InvalidKey):
        list(store.list(key))


def test_the_longest_key_s3_takes_is_taken_by_the_directory_store(tmp_path):
    key = "/".join(["é" * 127] * 4) + "/" + "k" * 3  # 4 x 254 + 4 + 3 = 1023 bytes of UTF-8
    assert len(key.encode()) == 1023
    store = DirStore(tmp_path)
    store.put(key, b"x")
    assert store.get(key) == b"x" and list(store.list()) == [key]
    assert validate_key("a" * 1024) and validate_key(".tmpx/a.tmp-") and validate_key("dot.tmp-/x")


def test_s3_refuses_a_key_too_long_with_its_prefix():
    with pytest.raises(InvalidKey, match="1024"):
        S3Store("bucket", "some/prefix").put("k" * 1020, b"x")


def test_dir_store_refuses_a_segment_longer_than_a_file_name_can_be(tmp_path):
    store = DirStore(tmp_path)
    key = "cat/" + "n" * 256
    for op in (lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.exists(key),
               lambda: store.delete(key)):
        with pytest.raises(InvalidKey, match="255 bytes") as err:
            op()
        assert "nnnn" in str(err.value)
    store.put("cat/" + "n" * 255, b"x")
    assert list(store.list()) == ["cat/" + "n" * 255]


def test_dir_store_key_that_is_both_an_object_and_a_folder(tmp_path):
    store = DirStore(tmp_path)
    store.put("a", b"1")
    with pytest.raises(InvalidKey, match="'a' is an object") as err:
        store.put("a/b", b"2")
    assert "a/b" in str(err.value)
    with pytest.raises(KeyNotFound):
        store.get("a/b")
    assert not store.exists("a/b")
    store.delete("a/b")
    assert list(store.list("a/")) == []
    store.put("c/d", b"3")
    with pytest.raises(InvalidKey, match="folder"):
        store.put("c", b"4")
    with pytest.raises(KeyNotFound):
        store.get("c")
    assert not store.exists("c")
    store.delete("c")
    assert store.get("c/d") == b"3"
    store.delete("c/d")  # S3 has no folders: once empty, c is free to be an object
    store.put("c", b"4")
    assert store.get("c") == b"4" and list(store.list()) == ["a", "c"]


def test_dir_store_lists_nothing_through_a_symlink(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"not yours")
    store = DirStore(root)
    store.put("cat/1.jpg", b"x")
    (root / "link").symlink_to(outside)
    (root / "cat" / "2.jpg").symlink_to(outside / "secret.txt")
    (root / "cat" / "3.jpg").symlink_to(root / "cat" / "1.jpg")
    assert list(store.list()) == ["cat/1.jpg"]
    assert list(store.list("cat/")) == ["cat/1.jpg"]
    with pytest.raises(InvalidKey, match="symbolic link"):
        list(store.list("link/"))
    with pytest.raises(InvalidKey, match="symbolic link"):
        store.exists("link/secret.txt")


def test_dir_store_does_not_follow_a_checked_folder_later_swapped_for_a_symlink(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    store = DirStore(root)
    store.put("cat/1.jpg", b"x")  # cat/ checked and found inside the root
    (root / "cat").rename(tmp_path / "cat-moved")
    (root / "cat").symlink_to(outside)
    with pytest.raises(InvalidKey, match="symbolic link"):
        store.put("cat/2.jpg", b"y")
    with pytest.raises(InvalidKey, match="symbolic link"):
        store.get("cat/1.jpg")
    assert list(outside.iterdir()) == []


def test_dir_store_writes_nothing_outside_while_a_folder_is_swapped_for_a_symlink(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    cat, real = root / "cat", root / "cat-real"
    outside.mkdir()
    store = DirStore(root)
    store.put("cat/0.jpg", b"x")
    stop, errors = threading.Event(), []

    def clear(path) -> None:  # whatever the store or the swapper left at path
        if path.is_symlink():
            path.unlink()
        shutil.rmtree(path, ignore_errors=True)

    def swap() -> None:  # cat/ is a folder, then a symlink leading out, then the folder again, ...
        try:
            while not stop.is_set():
                os.rename(cat, real)
                with contextlib.suppress(FileExistsError):  # the store made cat/ anew meanwhile
                    os.symlink(outside, cat)
                clear(cat)
                while True:
                    try:
                        os.rename(real, cat)
                        break
                    except OSError:  # the store made cat/ anew and wrote into it
                        clear(cat)
        except Exception as err:
            errors.append(err)

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        for i in range(300):
            with contextlib.suppress(StoreError):  # InvalidKey while cat/ is a symlink
                store.put(f"cat/{i}.jpg", b"x")
    finally:
        stop.set()
        swapper.join()
    assert errors == [] and list(outside.iterdir()) == []


def test_dir_store_skips_names_that_are_no_keys(tmp_path):
    store = DirStore(tmp_path)
    store.put("cat/1.jpg", b"x")
    (tmp_path / "cat" / "back\\slash.jpg").write_bytes(b"x")
    (tmp_path / "cat" / ".tmp-123-leftover").write_bytes(b"x")
    os.mkfifo(tmp_path / "cat" / "fifo")
    (tmp_path / "cat" / "empty-folder").mkdir()
    assert list(store.list()) == ["cat/1.jpg"]
    with pytest.raises(KeyNotFound):
        store.get("cat/fifo")
    with pytest.raises(KeyNotFound):
        store.get("cat/empty-folder")
    assert not store.exists("cat/fifo")


def test_dir_store_root_that_is_a_file(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    store = DirStore(tmp_path / "file")
    for op in (lambda: store.put("a", b"x"), lambda: store.get("a"), lambda: list(store.list())):
        with pytest.raises(StoreError, match="not a directory"):
            op()


def test_dir_store_key_over_folders_left_empty(tmp_path):
    store = DirStore(tmp_path)
    store.put("c/d/e", b"1")
    store.delete("c/d/e")  # S3 has no folders: no object is under c/ any more
    store.put("c", b"2")
    assert store.get("c") == b"2" and list(store.list()) == ["c"]
    store.put("f/g", b"3")
    (tmp_path / "f" / "h").mkdir()
    store.delete("f/g")
    (tmp_path / "f" / "h" / "not-mine").write_bytes(b"x")  # an object after all
    with pytest.raises(InvalidKey, match="folder of other objects"):
        store.put("f", b"4")
    assert store.get("f/h/not-mine") == b"x"


def test_a_prefix_may_end_with_the_start_of_a_hidden_name(store):
    for key in ("raw/.hidden.jpg", "raw/..jpg", "...", "raw/x.jpg"):
        store.put(key, b"x")
    assert list(store.list("raw/.")) == ["raw/..jpg", "raw/.hidden.jpg"]
    assert list(store.list("raw/..")) == ["raw/..jpg"]
    assert list(store.list("..")) == ["..."]
    for prefix in ("raw/../", "raw/./x", "/", "a//.", "raw/.tmp-"):
        with pytest.raises(InvalidKey):
            list(store.list(prefix))


def test_create_writes_only_where_nothing_is(store):
    assert store.create("runs/r/lease/000001.json", b"first")
    assert not store.create("runs/r/lease/000001.json", b"second")
    assert store.get("runs/r/lease/000001.json") == b"first"        # the loser changed nothing
    store.delete("runs/r/lease/000001.json")
    assert store.create("runs/r/lease/000001.json", b"again")


def test_create_races_have_exactly_one_winner(store):
    barrier = threading.Barrier(8)

    def attempt(i: int) -> bool:
        barrier.wait()
        return store.create("models/m/v1/claim.json", f"writer {i}".encode())

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(attempt, range(8)))
    assert won.count(True) == 1
    assert store.get("models/m/v1/claim.json") == f"writer {won.index(True)}".encode()


def test_dir_store_create_leaves_no_temporaries(tmp_path):
    store = DirStore(tmp_path / "store")
    store.create("a/b", b"1")
    store.create("a/b", b"2")
    assert os.listdir(tmp_path / "store" / "a") == ["b"]
