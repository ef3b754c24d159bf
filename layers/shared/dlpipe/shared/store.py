"""Object stores: S3 (through boto3) or a local directory, with one interface.

Both implementations share key validation, listing order (lexicographic, like S3) and
error types, so code written against one runs unchanged on the other. The store is
chosen by URL in `open_store`: ``s3://bucket/prefix`` or a directory path (optionally
``file://``).
"""

from __future__ import annotations

import itertools
import os
import posixpath
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

_TMP_COUNTER = itertools.count()


class StoreError(Exception):
    """Base class for store errors."""


class InvalidKey(StoreError, ValueError):
    """A key that could escape the store root or is otherwise malformed."""


class KeyNotFound(StoreError, KeyError):
    """The key does not exist in the store."""

    def __init__(self, key: str, where: str = "") -> None:
        super().__init__(key)
        self.key = key
        self.where = where

    def __str__(self) -> str:
        return f"no object at key {self.key!r}" + (f" in {self.where}" if self.where else "")


def validate_key(key: str) -> str:
    """Return `key` if safe; raise InvalidKey naming the problem otherwise.

    Keys are relative POSIX paths: no leading slash, no backslash, no `.` or `..`
    segment, no empty segment, no NUL. This is what keeps a directory store from
    being escaped and keeps S3 and directory layouts identical.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"key must be a non-empty string, got {key!r}")
    if "\x00" in key or "\\" in key:
        raise InvalidKey(f"key {key!r} contains a NUL or backslash")
    if key.startswith("/"):
        raise InvalidKey(f"key {key!r} is absolute; keys are relative to the store root")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidKey(f"key {key!r} has an empty, '.' or '..' segment")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key-like string that may end with '/'."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def join_key(*parts: str) -> str:
    """Join key parts with '/', ignoring empty parts, and validate the result."""
    return validate_key("/".join(p.strip("/") for p in parts if p and p.strip("/")))


class ObjectStore(ABC):
    """A flat key/value store of bytes, keyed by relative POSIX paths."""

    url: str
    # False where every request crosses a network (S3): worth caching and reading ahead.
    is_local: bool = False

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Bytes at `key`; KeyNotFound if absent."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write `data` at `key` atomically (readers see old or new, never partial)."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix`, in lexicographic order, paginating as needed."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored at `key`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; no error if absent (as in S3)."""

    def download_file(self, key: str, path: str | os.PathLike) -> None:
        """Copy the object at `key` to a local file (streamed where the store allows)."""
        Path(path).write_bytes(self.get(key))

    def upload_file(self, path: str | os.PathLike, key: str) -> None:
        """Store a local file at `key`."""
        self.put(key, Path(path).read_bytes())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class DirStore(ObjectStore):
    """A local directory standing in for S3: the embedded default.

    validate_key rules out `..` and absolute keys, so only a symlink inside the root can lead
    out of it, and every path is checked against that. Resolving a path costs a system call
    per component, half the cost of a small put; so the directories found to lie inside the
    root are remembered, and only a final component that is itself a symlink is resolved
    each time. (A directory swapped for a symlink while the store is open is not noticed:
    the store guards against mistakes in keys, not against someone with write access to it.)
    """

    is_local = True

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)
        self._inside: dict[str, Path] = {}  # key prefix -> its directory, checked to lie inside the root

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_inside": {}}

    def _resolve(self, path: Path, key: str) -> Path:
        path = path.resolve()
        if self.root != path and self.root not in path.parents:
            raise InvalidKey(f"key {key!r} resolves outside the store root")
        return path

    def _path(self, key: str) -> Path:
        folder, _, name = validate_key(key).rpartition("/")
        directory = self._inside.get(folder)
        if directory is None:
            directory = self._resolve(self.root / folder, key) if folder else self.root
            if directory.is_dir():
                self._inside[folder] = directory
        path = directory / name
        return self._resolve(path, key) if path.is_symlink() else path

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyNotFound(key, self.url) from None

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        # Write to a temporary file in the same directory, then rename: atomic on POSIX. The
        # name is unique to this process and thread, and O_EXCL refuses a leftover.
        tmp = f"{path.parent}/.tmp-{os.getpid()}-{threading.get_ident()}-{next(_TMP_COUNTER)}-{path.name[-20:]}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileNotFoundError:  # the first object under this prefix
            path.parent.mkdir(parents=True, exist_ok=True)
            self._path(key)  # now that it exists: check it, and remember it
            fd = os.open(tmp, flags, 0o666)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        # Walk only the deepest directory the prefix names fully, then filter by prefix.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base_dir if base_dir else self.root
        if not start.is_dir():
            return iter(())
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".tmp-")]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def download_file(self, key: str, path: str | os.PathLike) -> None:
        src = self._path(key)
        if not src.is_file():
            raise KeyNotFound(key, self.url)
        Path(path).write_bytes(src.read_bytes())


class S3Store(ObjectStore):
    """S3 through boto3; honours AWS_PROFILE, AWS_REGION and AWS_ENDPOINT_URL.

    boto3 reads AWS_ENDPOINT_URL itself, so the same code runs against AWS, moto,
    MinIO or LocalStack.
    """

    def __init__(self, bucket: str, prefix: str = "", client=None) -> None:
        if not bucket:
            raise StoreError("S3 URL needs a bucket: s3://BUCKET[/PREFIX]")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client

    @property
    def client(self):
        # Created lazily so that a store can be pickled into worker processes.
        if self._client is None:
            import boto3

            self._client = boto3.session.Session().client("s3")
        return self._client

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _is_missing(self, err) -> bool:
        code = err.response.get("Error", {}).get("Code", "")
        return code in ("NoSuchKey", "404", "NotFound")

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as err:
            if self._is_missing(err):
                raise KeyNotFound(key, self.url) from None
            raise

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as err:
            if self._is_missing(err):
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def download_file(self, key: str, path: str | os.PathLike) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.download_file(self.bucket, self._key(key), str(path))
        except ClientError as err:
            if self._is_missing(err):
                raise KeyNotFound(key, self.url) from None
            raise

    def upload_file(self, path: str | os.PathLike, key: str) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))


def open_store(url: str) -> ObjectStore:
    """Open the store named by `url`: ``s3://bucket[/prefix]`` or a directory."""
    if not url:
        raise StoreError("empty store URL: give s3://BUCKET[/PREFIX] or a directory path")
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, posixpath.normpath(parsed.path).lstrip("/") if parsed.path not in ("", "/") else "")
    if parsed.scheme == "file":
        return DirStore(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise StoreError(f"unsupported store URL scheme {parsed.scheme!r} in {url!r}: use s3:// or a directory")
    return DirStore(url)
