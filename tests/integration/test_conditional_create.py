"""The store's conditional create against a real S3 endpoint (the moto server): S3's If-None-Match PUT."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import boto3

from dlpipe.shared.store import open_store


def test_s3_create_is_an_if_none_match_put_with_one_winner(aws_env):
    boto3.client("s3").create_bucket(Bucket="dlpipe-conditional")
    store = open_store("s3://dlpipe-conditional/models")
    barrier = threading.Barrier(6)

    def attempt(i: int) -> bool:
        barrier.wait()
        return open_store("s3://dlpipe-conditional/models").create("runs/r/lease/000001.json", f"{i}".encode())

    with ThreadPoolExecutor(6) as pool:
        won = list(pool.map(attempt, range(6)))
    assert won.count(True) == 1
    assert store.get("runs/r/lease/000001.json") == f"{won.index(True)}".encode()
    assert not store.create("runs/r/lease/000001.json", b"late")
