"""Object stores: a local directory here, S3 in dlpipe.shared.s3_store, with one interface.

Both implementations share key validation and error types (dlpipe.shared.keys, re-exported
here) and listing order (lexicographic, like S3), so code written against one runs unchanged
on the other. The store is chosen by URL in `open_store`: ``s3://bucket/prefix`` or a
directory path (optionally ``file://``).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import posixpath
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from dlpipe.shared.dir_walk import FOLDER, LISTED, link_once, remove_empty_folder, scan
from dlpipe.shared.keys import (
    MAX_NAME_BYTES,
    TMP_PREFIX,
    InvalidKey,
    KeyNotFound,
    StoreError,
    check_name_lengths,
    dir_key_parts,
    join_key,
    quote_key,
    validate_key,
    validate_prefix,
)

__all__ = ["STORE_BYTES", "DirStore", "InvalidKey", "KeyNotFound", "ObjectStore", "StoreError", "join_key",
           "open_store", "validate_key", "validate_prefix"]

_TMP_COUNTER = itertools.count()


class StoreBytes:
    """Bytes this process read from and wrote to stores: what a function moves to and from S3.

    The local invoker reads it around each invocation to project its Lambda duration
    (orchestrator.invokers.projection); counting is a few additions, harmless elsewhere.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.read = 0
        self.written = 0

    def add(self, read: int = 0, written: int = 0) -> None:
        with self._lock:
            self.read += read
            self.written += written

    @property
    def total(self) -> int:
        return self.read + self.written


STORE_BYTES = StoreBytes()


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
    def create(self, key: str, data: bytes) -> bool:
        """`put` unless an object is at `key` (True if written): of two writers racing, one wins (leases)."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix`, in lexicographic order, paginating as needed."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored at `key`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; no error if absent (as in S3)."""

    def upload_file(self, path: str | os.PathLike, key: str) -> None:
        """Store a local file at `key`."""
        self.put(key, Path(path).read_bytes())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO never hangs a get
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class DirStore(ObjectStore):
    """A local directory standing in for S3: the embedded default.

    Every operation walks from the root through directory descriptors (openat), one key
    segment at a time, never following a symlink: no key, symlink, or folder swapped for a
    symlink midway leads a read or a write outside the root, and nothing is checked first and
    used later. Symlinks are no objects: listings skip them, reaching one raises InvalidKey
    (put and delete replace or remove the link itself). What S3 holds and a directory cannot,
    a segment over 255 bytes or a key that is both an object and a folder (`a` and `a/b`),
    raises InvalidKey too; folders left empty are no objects, and give way to a key. Failures
    of the medium itself (permissions, a full disk) stay OSError, as S3's stay ClientError.
    (A folder moved out of the root while an operation holds it open is followed there: that
    takes write access outside the root, which the store does not guard against.)
    """

    is_local = True

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def _folder(self, key: str, segments: list[str], create: bool = False, flags: int = FOLDER) -> int:
        """A descriptor of the folder `segments` on the way to `key`; KeyNotFound if absent and not `create`."""
        root = (FOLDER if segments else flags) & ~os.O_NOFOLLOW  # the root is where the user points: followed
        try:
            fd = os.open(self.url, root)
        except FileNotFoundError:
            if not create:
                raise KeyNotFound(key, self.url) from None
            os.makedirs(self.url, exist_ok=True)
            fd = os.open(self.url, root)
        except NotADirectoryError:
            raise StoreError(f"the store root {self.url} is not a directory: give a directory") from None
        last = len(segments) - 1
        for depth, name in enumerate(segments):
            try:
                try:
                    child = os.open(name, flags if depth == last else FOLDER, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise KeyNotFound(key, self.url) from None
                    with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
                        os.mkdir(name, 0o777, dir_fd=fd)
                    child = os.open(name, flags if depth == last else FOLDER, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise self._refusal(fd, name, key, create) from None
                raise  # FileNotFoundError when creating: the folder went again, and a put tries again
            finally:
                os.close(fd)
            fd = child
        return fd

    def _refusal(self, fd: int, name: str, key: str, create: bool) -> StoreError:
        """Why the folder `name` (under `fd`) on the way to `key` could not be entered."""
        try:
            mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
        except FileNotFoundError:  # removed meanwhile: a put tries again
            if create:
                raise
            return KeyNotFound(key, self.url)
        if stat.S_ISLNK(mode) or stat.S_ISDIR(mode):  # a folder now: a symlink a moment ago
            return _through_symlink(key, name)
        if create:
            return InvalidKey(f"cannot store {quote_key(key)}: {name!r} is an object, and a directory store cannot "
                              "also make it a folder of objects (S3 can): rename one of them")
        return KeyNotFound(key, self.url)

    def get(self, key: str) -> bytes:
        segments, name = dir_key_parts(key)
        fd = self._folder(key, segments)
        try:
            file = os.open(name, _READ, dir_fd=fd)
        except FileNotFoundError:
            raise KeyNotFound(key, self.url) from None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise _through_symlink(key) from None
            raise
        finally:
            os.close(fd)
        try:
            info = os.fstat(file)
            if not stat.S_ISREG(info.st_mode):  # a folder, a FIFO
                raise KeyNotFound(key, self.url)
            data = os.read(file, info.st_size + 1)  # one read, but for a file changed meanwhile (or huge)
            while len(data) != info.st_size and (more := os.read(file, 1 << 20)):
                data += more
            STORE_BYTES.add(read=len(data))
            return data
        finally:
            os.close(file)

    def put(self, key: str, data: bytes) -> None:
        self._put(key, data, exclusive=False)

    def create(self, key: str, data: bytes) -> bool:
        return self._put(key, data, exclusive=True)

    def _put(self, key: str, data: bytes, exclusive: bool) -> bool:
        segments, name = dir_key_parts(key)
        for _ in range(3):  # a folder that another writer removes midway is made again
            try:
                fd = self._folder(key, segments, create=True)
            except FileNotFoundError:
                continue
            try:
                written = self._write(fd, name, data, key, exclusive)
                if written is not None:
                    if written:
                        STORE_BYTES.add(written=len(data))
                    return written
            finally:
                os.close(fd)
        raise StoreError(f"cannot store {quote_key(key)}: its folder was removed while writing, three times over")

    def _write(self, fd: int, name: str, data: bytes, key: str, exclusive: bool = False) -> bool | None:
        """Write a temporary file in the folder `fd`, then rename it to `name` (atomic on POSIX), or
        with `exclusive` hard-link it there, which fails if `name` exists (False). None if the folder
        went meanwhile. The temporary's name is unique to this process and thread, no key can name
        it, and O_EXCL refuses a leftover."""
        tmp = f"{TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{next(_TMP_COUNTER)}"
        try:
            file = os.open(tmp, _CREATE, 0o666, dir_fd=fd)
        except FileNotFoundError:
            return None
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(file, view):]
            finally:
                os.close(file)
            if exclusive:
                return link_once(fd, tmp, name)
            for attempt in (1, 2):
                try:
                    os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
                    break
                except IsADirectoryError:  # fine if that folder holds no object: S3 has no folders, only keys
                    if attempt == 2 or not remove_empty_folder(fd, name):
                        raise InvalidKey(f"cannot store {quote_key(key)}: it is a folder of other objects, and a "
                                         "directory store cannot also make it an object (S3 can): rename one") from None
        except BaseException as err:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
            if isinstance(err, FileNotFoundError):  # the folder went meanwhile
                return None
            raise
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        if len(prefix) > MAX_NAME_BYTES // 4:
            check_name_lengths(prefix)
        *segments, fragment = prefix.split("/")
        try:
            fd = self._folder(prefix, segments, flags=LISTED)
        except KeyNotFound:
            return iter(())
        keys: list[str] = []
        scan(fd, "".join(f"{s}/" for s in segments), fragment, keys)
        return iter(sorted(keys))

    def _mode(self, key: str) -> tuple[int, str, int | None]:
        """The folder holding `key` (for the caller to close), the key's name in it, and what is there."""
        segments, name = dir_key_parts(key)
        fd = self._folder(key, segments)
        try:
            return fd, name, os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return fd, name, None
        except BaseException:
            os.close(fd)
            raise

    def exists(self, key: str) -> bool:
        try:
            fd, _, mode = self._mode(key)
        except KeyNotFound:
            return False
        os.close(fd)
        if mode is not None and stat.S_ISLNK(mode):
            raise _through_symlink(key)
        return mode is not None and stat.S_ISREG(mode)

    def delete(self, key: str) -> None:
        try:
            fd, name, mode = self._mode(key)
        except KeyNotFound:
            return
        try:
            if mode is not None and not stat.S_ISDIR(mode):  # a folder is no object
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)  # a symlink itself, never what it leads to
        finally:
            os.close(fd)


def _through_symlink(key: str, name: str = "") -> InvalidKey:
    where = f"passes through {name!r}, a symbolic link" if name else "is a symbolic link"
    return InvalidKey(f"key {quote_key(key)} {where}: the directory store follows none, so that nothing outside "
                      "its root is read or written")


def open_store(url: str) -> ObjectStore:
    """Open the store named by `url`: ``s3://bucket[/prefix]`` or a directory."""
    if not url:
        raise StoreError("empty store URL: give s3://BUCKET[/PREFIX] or a directory path")
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        prefix = posixpath.normpath(parsed.path).lstrip("/") if parsed.path not in ("", "/") else ""
        from dlpipe.shared.s3_store import S3Store  # boto3 only where S3 is used

        return S3Store(parsed.netloc, prefix)
    if parsed.scheme == "file":
        return DirStore(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise StoreError(f"unsupported store URL scheme {parsed.scheme!r} in {url!r}: use s3:// or a directory")
    return DirStore(url)
