"""What the orchestrator's own process asks of the stores: requests by kind, and bytes each way.

Why: Lambda's compute is not the whole bill. S3 prices every request (PUT and LIST about
12 times a GET), and every byte the orchestrator downloads from AWS is internet egress when
it runs on the user's machine: averaging 64 SqueezeNet workers here moves ~1 GB a round.
The session wraps its stores in `MeteredStore`, which counts into the session's `Meter`;
orchestrator.costs prices the counts and orchestrator.report prints them.

Requests are counted as S3 would bill them, whichever store answers (a directory store is
priced as the bucket it stands in for): a listing is one LIST per 1,000 keys, `exists` a
HEAD, and a file moved with boto3's transfer manager over its 8 MB threshold one request
per 8 MB part (plus create and complete for an upload, a HEAD for a download).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dlpipe.shared.store import KeyNotFound, ObjectStore

REQUEST_KINDS = ("put", "get", "list", "head", "delete")
LIST_PAGE = 1000                 # keys per ListObjectsV2 response
MULTIPART_CHUNK = 8 * 2 ** 20    # boto3's default multipart threshold and part size


@dataclass
class Traffic:
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REQUEST_KINDS, 0))
    bytes_down: int = 0          # to this process
    bytes_up: int = 0            # from this process

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic({k: self.requests[k] - other.requests[k] for k in REQUEST_KINDS},
                       self.bytes_down - other.bytes_down, self.bytes_up - other.bytes_up)

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic({k: self.requests[k] + other.requests[k] for k in REQUEST_KINDS},
                       self.bytes_down + other.bytes_down, self.bytes_up + other.bytes_up)

    @property
    def request_count(self) -> int:
        return sum(self.requests.values())

    def as_record(self) -> dict:
        return {"requests": dict(self.requests), "bytes_down": self.bytes_down, "bytes_up": self.bytes_up}


class Meter:
    """A thread-safe running total; `take()` is the traffic since the previous take."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = Traffic()
        self._taken = Traffic()

    def count(self, kind: str, requests: int = 1, down: int = 0, up: int = 0) -> None:
        with self._lock:
            self._total.requests[kind] += requests
            self._total.bytes_down += down
            self._total.bytes_up += up

    def snapshot(self) -> Traffic:
        with self._lock:
            return Traffic(dict(self._total.requests), self._total.bytes_down, self._total.bytes_up)

    def take(self) -> Traffic:
        now = self.snapshot()
        with self._lock:
            since, self._taken = now - self._taken, now
        return since


def _parts(size: int) -> int:
    """Requests for moving a file of `size` bytes: one, or one per multipart part plus create and complete."""
    return 1 if size <= MULTIPART_CHUNK else math.ceil(size / MULTIPART_CHUNK) + 2


class MeteredStore(ObjectStore):
    """Delegates every call to `inner` and counts it into `meter`."""

    def __init__(self, inner: ObjectStore, meter: Meter) -> None:
        self.inner = inner
        self.meter = meter
        self.url = inner.url
        self.is_local = inner.is_local

    def get(self, key: str) -> bytes:
        try:
            data = self.inner.get(key)
        except KeyNotFound:
            self.meter.count("get")
            raise
        self.meter.count("get", down=len(data))
        return data

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)
        self.meter.count("put", up=len(data))

    def list(self, prefix: str = "") -> Iterator[str]:
        self.meter.count("list")
        for n, key in enumerate(self.inner.list(prefix), start=1):
            if n % LIST_PAGE == 0:
                self.meter.count("list")  # the next page (S3 asks for it even when it is empty)
            yield key

    def exists(self, key: str) -> bool:
        self.meter.count("head")
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self.meter.count("delete")
        self.inner.delete(key)

    def upload_file(self, path: str | os.PathLike, key: str) -> None:
        size = Path(path).stat().st_size
        self.inner.upload_file(path, key)
        self.meter.count("put", requests=_parts(size), up=size)

    def __repr__(self) -> str:
        return f"MeteredStore({self.inner!r})"
