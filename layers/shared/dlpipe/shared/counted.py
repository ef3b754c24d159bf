"""The store requests a function makes, counted as S3 bills them, so that its reply can say.

Why: S3 requests, not compute, are most of augment's bill, and they are made inside the
functions, where the orchestrator's own meter cannot see them. Every store a handler opens
comes from `Settings` wrapped in a `CountedStore`, which counts into this process's `COUNT`;
`counting()` around an invocation (dlpipe.shared.events does it for every handler) gives the
requests that invocation made: a Lambda container, like a local worker, runs one at a time.

Requests are counted as S3 bills them, whichever store answers: a listing is one LIST per 1,000
keys, `exists` a HEAD, a file over boto3's 8 MB multipart threshold one PUT per 8 MB part plus
create and complete, and a GET that finds nothing is still a GET.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dlpipe.shared.store import KeyNotFound, ObjectStore

REQUEST_KINDS = ("put", "get", "list", "head", "delete")
LIST_PAGE = 1000                 # keys per ListObjectsV2 response
MULTIPART_CHUNK = 8 * 2 ** 20    # boto3's default multipart threshold and part size


class RequestCount:
    """Requests by kind, thread-safe: a batch writes on several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(REQUEST_KINDS, 0)

    def add(self, kind: str, requests: int = 1) -> None:
        with self._lock:
            self._counts[kind] += requests

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


COUNT = RequestCount()   # this process's requests, through every CountedStore


@contextmanager
def counting() -> Iterator[dict[str, int]]:
    """A dict that holds, once the block ends, the requests made during it (by kind)."""
    before = COUNT.snapshot()
    made: dict[str, int] = {}
    try:
        yield made
    finally:
        after = COUNT.snapshot()
        made.update({kind: after[kind] - before[kind] for kind in REQUEST_KINDS})


def multipart_requests(size: int) -> int:
    """Requests for uploading `size` bytes with boto3's transfer manager."""
    return 1 if size <= MULTIPART_CHUNK else math.ceil(size / MULTIPART_CHUNK) + 2


class CountedStore(ObjectStore):
    """`inner`, every request counted into COUNT."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.is_local = inner.is_local

    def get(self, key: str) -> bytes:
        try:
            return self.inner.get(key)
        except KeyNotFound:
            raise
        finally:
            COUNT.add("get")

    def put(self, key: str, data: bytes) -> None:
        COUNT.add("put")
        self.inner.put(key, data)

    def list(self, prefix: str = "") -> Iterator[str]:
        COUNT.add("list")
        for n, key in enumerate(self.inner.list(prefix), start=1):
            if n % LIST_PAGE == 0:
                COUNT.add("list")  # the next page (S3 asks for it even when it is empty)
            yield key

    def exists(self, key: str) -> bool:
        COUNT.add("head")
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        COUNT.add("delete")
        self.inner.delete(key)

    def upload_file(self, path: str | os.PathLike, key: str) -> None:
        COUNT.add("put", multipart_requests(Path(path).stat().st_size))
        self.inner.upload_file(path, key)

    def __repr__(self) -> str:
        return f"CountedStore({self.inner!r})"


def counted(store: ObjectStore) -> ObjectStore:
    return store if isinstance(store, CountedStore) else CountedStore(store)
