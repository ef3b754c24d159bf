"""The store requests a function makes, counted for its reply (dlpipe.shared.counted)."""

from __future__ import annotations

import threading

import pytest

from dlpipe.shared.config import Settings
from dlpipe.shared.counted import CountedStore, counted, counting
from dlpipe.shared.store import DirStore, KeyNotFound


def test_requests_are_counted_as_s3_bills_them(tmp_path):
    store = CountedStore(DirStore(tmp_path))
    with counting() as made:
        for i in range(1001):
            store.put(f"k/{i:04d}", b"x")
        assert len(list(store.list("k/"))) == 1001          # two pages
        assert store.get("k/0001") == b"x" and store.exists("k/0002")
        with pytest.raises(KeyNotFound):
            store.get("missing")                           # still a GET
        store.delete("k/0003")
        big = tmp_path / "big.bin"
        big.write_bytes(b"\0" * (20 * 2 ** 20))
        store.upload_file(big, "big")                       # 3 parts of 8 MB, plus create and complete
    assert made == {"put": 1001 + 5, "get": 2, "list": 2, "head": 1, "delete": 1}


def test_counting_gives_the_requests_of_its_block_from_every_thread(tmp_path):
    store = counted(DirStore(tmp_path))
    assert counted(store) is store                          # never counted twice
    store.put("before", b"x")
    with counting() as made:
        threads = [threading.Thread(target=lambda i=i: [store.put(f"t{i}/{j}", b"y") for j in range(50)])
                   for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    store.get("before")
    assert made["put"] == 200 and made["get"] == 0


def test_the_stores_functions_open_are_counted(tmp_path):
    settings = Settings(data_url=str(tmp_path / "d"), model_url=str(tmp_path / "m"), table_url="sqlite:///x")
    with counting() as made:
        settings.data_store().put("a", b"1")
        settings.model_store().exists("b")
    assert made["put"] == 1 and made["head"] == 1
