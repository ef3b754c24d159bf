"""Store keys and store errors: the rules both stores (S3 and a directory) hold keys to.

One rule for both, so that a key valid on one store is valid on the other and code written
against one runs unchanged on the other; and the directory store's own limit on top.
"""

from __future__ import annotations

MAX_KEY_BYTES = 1024  # S3's limit, in UTF-8
TMP_PREFIX = ".tmp-"  # the directory store's temporary files; no key segment may start with it
MAX_NAME_BYTES = 255  # a file name's limit on every common file system: a directory store's segments


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


def quote_key(key: str) -> str:
    """`key` for a message: quoted, and cut short if long."""
    return repr(key) if len(key) <= 80 else f"{key[:60]!r}... ({len(key)} characters)"


def validate_key(key: str) -> str:
    """Return `key` if both stores can hold it; raise InvalidKey naming the rule otherwise.

    Keys are relative POSIX paths of at most 1,024 bytes of UTF-8 (S3's limit): no leading
    slash, no backslash, no NUL, no empty, `.` or `..` segment (so a directory store cannot be
    escaped and both layouts are identical), and no segment starting with `.tmp-`: the
    directory store's temporary files, which listings must never show, in flight or left by
    a crash. S3 is held to the same rule so that a key valid on one store is valid on both.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"key must be a non-empty string, got {key!r}")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey(f"key {quote_key(key)} is not valid Unicode (a lone surrogate): S3 keys are UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(f"key {quote_key(key)} is {size} bytes of UTF-8; S3 takes at most {MAX_KEY_BYTES}")
    if "\x00" in key or "\\" in key:
        raise InvalidKey(f"key {quote_key(key)} contains a NUL or backslash")
    if key.startswith("/"):
        raise InvalidKey(f"key {quote_key(key)} is absolute; keys are relative to the store root")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidKey(f"key {quote_key(key)} has an empty, '.' or '..' segment")
        if part.startswith(TMP_PREFIX):
            raise InvalidKey(f"key {quote_key(key)} has a segment starting with {TMP_PREFIX!r}, reserved for "
                             "the directory store's temporary files: rename it")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or the start of a key: a valid key, one followed by '/', or either
    followed by '.' or '..' (the start of a segment such as '.hidden' or '...'); InvalidKey if not."""
    folders, slash, fragment = prefix.rpartition("/")
    start = folders + slash if fragment in (".", "..") else prefix
    if start:
        validate_key(start.removesuffix("/"))
    return prefix


def join_key(*parts: str) -> str:
    """Join key parts with '/', ignoring empty parts, and validate the result."""
    return validate_key("/".join(p.strip("/") for p in parts if p and p.strip("/")))


def dir_key_parts(key: str) -> tuple[list[str], str]:
    """The folders and the name of `key`, refused if a directory cannot hold it."""
    *segments, name = validate_key(key).split("/")
    if len(key) > MAX_NAME_BYTES // 4:
        check_name_lengths(key)
    return segments, name


def check_name_lengths(key: str) -> None:
    """InvalidKey if a segment of `key` is longer than a file name can be."""
    for part in key.split("/"):
        if len(part) > MAX_NAME_BYTES // 4 and len(part.encode()) > MAX_NAME_BYTES:
            raise InvalidKey(f"key {quote_key(key)} has a segment of {len(part.encode())} bytes; a directory store "
                             f"holds names of at most {MAX_NAME_BYTES} bytes (UTF-8): shorten it")


def is_key_segment(name: str) -> bool:
    """Whether a name found in a directory store can be a key's segment (see validate_key)."""
    if name.startswith(TMP_PREFIX) or "\\" in name:
        return False
    if name.isascii():
        return True
    try:
        name.encode()
    except UnicodeEncodeError:  # a name that is no UTF-8 comes decoded with lone surrogates
        return False
    return True
