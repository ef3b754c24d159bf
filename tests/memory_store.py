"""An in-memory ObjectStore for tests: remote-like (not a directory), and observable."""

from __future__ import annotations

import threading

from dlpipe.shared.store import KeyNotFound, ObjectStore, StoreError


class MemoryStore(ObjectStore):
    """Counts reads, records which threads wrote, and can refuse writes to matching keys."""

    def __init__(self, fail_on: str = "") -> None:
        self.url = "memory://test"
        self.objects: dict[str, bytes] = {}
        self.fail_on = fail_on
        self.gets = 0
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            self.gets += 1
        try:
            return self.objects[key]
        except KeyError:
            raise KeyNotFound(key, self.url) from None

    def put(self, key, data):
        with self._lock:
            self.threads.add(threading.current_thread().name)
        if self.fail_on and self.fail_on in key:
            raise StoreError(f"refused {key}")
        self.objects[key] = bytes(data)

    def create(self, key, data):
        with self._lock:
            if key in self.objects:
                return False
            self.objects[key] = bytes(data)
            return True

    def list(self, prefix=""):
        return iter(sorted(k for k in self.objects if k.startswith(prefix)))

    def exists(self, key):
        return key in self.objects

    def delete(self, key):
        self.objects.pop(key, None)
